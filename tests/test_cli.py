"""The command line as operators use it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import tempfile

import pytest
import redis as sync_redis

from tests.conftest import PYTHON, RedisServer, free_port, start_redis, worker_env


def ackworker(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "worker", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enqueue_from_arguments_and_stdin(redis_server: RedisServer, prefix: str) -> None:
    env = worker_env(ACKWORKER_REDIS_URL=redis_server.url, ACKWORKER_KEY_PREFIX=prefix)
    done = ackworker("enqueue", "a" * 32, "b" * 32, "--task-no", "T9", env=env)
    assert done.returncode == 0, done.stderr
    piped = ackworker("enqueue", "--domain", "example.com", env=env, stdin="c1\n\nc2\n")
    assert piped.returncode == 0, piped.stderr
    client = sync_redis.Redis.from_url(redis_server.url)
    rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(f"{prefix}:tasks")  # type: ignore[assignment]
    fields = [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]
    assert fields == [
        {"id": "a" * 32, "task_no": "T9"},
        {"id": "b" * 32, "task_no": "T9"},
        {"id": "c1", "domain": "example.com"},
        {"id": "c2", "domain": "example.com"},
    ]
    groups: list[dict[str, bytes]] = client.xinfo_groups(f"{prefix}:tasks")  # type: ignore[assignment]
    assert [g["name"].decode() for g in groups] == [prefix]
    client.close()


def test_enqueue_refuses_a_bad_id_with_exit_2(redis_server: RedisServer, prefix: str) -> None:
    env = worker_env(ACKWORKER_REDIS_URL=redis_server.url, ACKWORKER_KEY_PREFIX=prefix)
    done = ackworker("enqueue", "good1", "bad id;rm", env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "'bad id;rm'" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_against_a_redis_that_wants_a_password_exits_2() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = start_redis(port, workdir, "--requirepass", "s3cret-redis-pass")
        try:
            env = worker_env(
                ACKWORKER_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                ALIBABA_CLOUD_ACCESS_KEY_ID="testid",
                ALIBABA_CLOUD_ACCESS_KEY_SECRET="testsecret",
            )
            done = ackworker("run", env=env)
            wrong = ackworker(
                "run", env={**env, "ACKWORKER_REDIS_URL": f"redis://:nope@127.0.0.1:{port}/0"}
            )
        finally:
            server.stop()
    for result in (done, wrong):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "ACKWORKER_REDIS_URL" in lines[0]
        assert "Traceback" not in result.stderr
        assert "nope" not in result.stderr + result.stdout
        assert "s3cret-redis-pass" not in result.stderr + result.stdout


def test_check_config_survives_a_closed_pipe() -> None:
    env = worker_env(ALIBABA_CLOUD_ACCESS_KEY_ID="testid", ALIBABA_CLOUD_ACCESS_KEY_SECRET="x" * 8)
    shell = f"'{PYTHON}' -m worker check-config | head -n 1"
    done = subprocess.run(shell, shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_missing_credentials_exit_2(command: str) -> None:
    done = ackworker(command, env=worker_env(HOME="/nonexistent"))
    assert done.returncode == 2
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in done.stderr
    assert "Traceback" not in done.stderr
