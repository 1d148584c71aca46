"""``ackworker mock-api`` as a process: listening line, seeding, clean stop, bad flags."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from tests.conftest import PYTHON, REPO, worker_env
from tests.test_mockapi_support import ACK, Prepared, ids_params, v1_request
from worker.dev.mockapi.auth import AcceptedKey

LISTENING = "mock-api listening on http://127.0.0.1:"
SECRET = "cli-SECRET-do-not-print"


class Lines:
    """Lines of a pipe, read by a thread so the test can wait with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Once the process has exited: let the reader see end of stream, then close."""
        self._thread.join(timeout=10)
        self._stream.close()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put("")  # end of stream

    def next(self, timeout_s: float = 20.0) -> str:
        """The next line; fails the test if none comes in time."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout_s}s") from None

    def rest(self) -> list[str]:
        """Every line left, once the process has exited."""
        lines = []
        while (line := self.next()) != "":
            lines.append(line)
        return lines


@pytest.fixture
def mock_api() -> Iterator[Any]:
    procs: list[tuple[subprocess.Popen[str], Lines, Lines]] = []

    def start(*args: str, **env: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
        proc = subprocess.Popen(
            [PYTHON, "-m", "worker", "mock-api", "--port", "0", *args],
            cwd=REPO,
            env=worker_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        procs.append((proc, Lines(proc.stdout), Lines(proc.stderr)))
        return procs[-1]

    yield start
    for proc, out, err in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        out.close()
        err.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return orjson.loads(reply.read())


def call(request: Prepared) -> Any:
    sent = urllib.request.Request(str(request.url), method=request.method, headers=request.headers)
    with urllib.request.urlopen(sent, timeout=10) as reply:
        return orjson.loads(reply.read())


def test_seed_to_stdout_listens_on_stderr_and_stops_on_sigterm(mock_api: Any) -> None:
    proc, out, err = mock_api("--seed", "5", "--access-key-secret", SECRET)
    ids = [out.next() for _ in range(5)]
    line = err.next()
    assert line.startswith(LISTENING)
    url = line.removeprefix("mock-api listening on ")
    assert get_json(f"{url}/_admin/pending") == {"ids": ids, "count": 5}
    endpoint = url.removeprefix("http://")
    key = AcceptedKey("testid", SECRET)
    assert call(v1_request(endpoint, ACK, ids_params(ids[:2]), key=key))["Result"] == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert out.rest() == []
    assert err.rest() == []


def test_listening_line_on_stdout_and_sigint(mock_api: Any, tmp_path: Path) -> None:
    seed_file = tmp_path / "ids.txt"
    seed_file.write_text("aaa\n\nbbb\n")
    seed_out = tmp_path / "generated.txt"
    proc, out, _ = mock_api(
        "--seed-file", str(seed_file), "--seed", "2", "--seed-out", str(seed_out)
    )
    line = out.next()
    assert line.startswith(LISTENING)
    generated = seed_out.read_text().split()
    assert len(generated) == 2
    pending = get_json(line.removeprefix("mock-api listening on ") + "/_admin/pending")
    assert pending["ids"] == ["aaa", "bbb", *generated]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0


def test_credentials_default_from_the_environment(mock_api: Any) -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "envid", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET}
    proc, out, err = mock_api("--fault-seed", "3", "--latency-ms", "1", **env)
    url = out.next().removeprefix("mock-api listening on ")
    key = AcceptedKey("envid", SECRET)
    answer = call(v1_request(url.removeprefix("http://"), ACK, ids_params(["x"]), key=key))
    assert answer["Result"] == 0
    assert get_json(f"{url}/_admin/faults")["latency_ms"] == 1.0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not any(SECRET in line for line in out.rest() + err.rest())


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--throttle-rate", "1.5"),
        ("--drop-rate", "-0.1"),
        ("--latency-ms", "-1"),
        ("--hang-s", "0"),
        ("--error-rate", "lots"),
        ("--retry-after-ms", "1.5"),
        ("--port", "70000"),
        ("--fault-seed", "abc"),
        ("--seed", "-3"),
        ("--seed-file", "/nonexistent/ids.txt"),
    ],
)
def test_bad_flag_exits_2_with_one_line(flag: str, value: str) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "worker", "mock-api", "--port", "0", flag, value],
        cwd=REPO,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"ackworker: {flag} {value}:")
    assert done.stdout == ""


def test_port_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [PYTHON, "-m", "worker", "mock-api", "--port", str(port)],
            cwd=REPO,
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"ackworker: --port {port}:")
