"""The heartbeat: written while a worker runs, gone when it stops, expiring when it freezes,
and ``ackworker health`` reading it as a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence

import anyio
import pytest
import structlog
from redis.asyncio import Redis

from tests.conftest import PYTHON, RedisServer, worker_env
from tests.harness import ScriptedApi, drained, make_settings, running_worker, wait_for
from worker.api.client import AckResult
from worker.commands.status import collect_status
from worker.entries import DEFAULT_ACCOUNT
from worker.errors import AuthError
from worker.observe.cost import read_requests
from worker.store.enqueue import enqueue
from worker.store.heartbeat import Heartbeat, read_beats
from worker.store.keys import Keys
from worker.totals import ACKNOWLEDGE, POLL

pytestmark = pytest.mark.anyio


def vitals(paused: str = "") -> Mapping[str, str | int]:
    return {"state": "running", "paused": paused, "confirmed": 3, "dead": 1, "held": 0}


async def health(redis_server: RedisServer, prefix: str, **env: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [PYTHON, "-m", "worker", "health"],
        env=worker_env(ACKWORKER_REDIS_URL=redis_server.url, ACKWORKER_KEY_PREFIX=prefix, **env),
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_a_running_worker_beats_and_its_heartbeat_goes_when_it_stops(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    settings = make_settings(redis_server.url, prefix)
    async with running_worker(settings, redis, ScriptedApi()):
        # The first beat is written before the worker reports started: no waiting needed.
        [beat] = await read_beats(redis, keys)
        assert beat.consumer == settings.consumer
        assert beat.host == socket.gethostname()
        assert beat.state == "running"
        assert beat.paused == ""
        assert beat.fresh
        assert 0 < await redis.pttl(keys.heartbeat(settings.consumer)) <= 15_000
    assert await redis.exists(keys.heartbeat(settings.consumer)) == 0
    assert await redis.zcard(keys.workers) == 0
    assert await read_beats(redis, keys) == []


async def test_a_worker_that_stops_sending_says_so_in_its_heartbeat(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    def refuse(ids: Sequence[str], n: int) -> AckResult:
        raise AuthError("InvalidAccessKeyId.NotFound", "Specified access key is not found.")

    # A short grace: the batch waits at the closed gate until the drain gives up on it.
    settings = make_settings(redis_server.url, prefix, shutdown_grace_s=0.2)
    async with running_worker(settings, redis, ScriptedApi(refuse)) as worker:
        await redis.xadd(Keys(prefix).tasks, {"id": "n1"})

        async def gate_closed() -> bool:
            return not worker.lanes[DEFAULT_ACCOUNT].gate.is_open

        await wait_for(gate_closed, what="the gate to close")
        beat = Heartbeat(redis, Keys(prefix), settings.consumer, worker.vitals)
        await beat.beat()  # the worker's next tick, without waiting five seconds for it
        [seen] = await read_beats(redis, Keys(prefix))
        assert seen.paused == "InvalidAccessKeyId.NotFound"


async def test_a_frozen_worker_stops_counting_as_alive(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    beat = Heartbeat(redis, keys, "frozen", vitals, interval_s=0.05)
    await beat.beat()  # and then never again, like a worker whose loop is stuck
    assert [b.consumer for b in await read_beats(redis, keys)] == ["frozen"]

    async def gone() -> bool:
        return await read_beats(redis, keys) == []

    await wait_for(gone, timeout_s=5, what="the heartbeat to expire")
    assert await redis.exists(keys.heartbeat("frozen")) == 0


async def test_a_redis_failure_is_logged_and_never_raised(prefix: str) -> None:
    dead_redis = Redis.from_url("redis://127.0.0.1:1/0")
    beat = Heartbeat(dead_redis, Keys(prefix), "c1", vitals, interval_s=1.0)
    with structlog.testing.capture_logs() as logs:
        await beat.beat()
        await beat.beat()
        await beat.clear()
    await dead_redis.aclose()
    failures = [e for e in logs if e["event"] == "heartbeat.failed"]
    assert [e["failures"] for e in failures] == [1, 2, 3]
    assert "ConnectionError" in failures[0]["error"]


async def test_health_is_0_for_this_hosts_fresh_heartbeat_and_1_without(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    code, out, _ = await health(redis_server, prefix)
    assert (code, out.count("\n")) == (1, 1)
    assert "no fresh heartbeat for host" in out

    beat = Heartbeat(redis, Keys(prefix), "worker-a", lambda: vitals("InvalidTimeStamp.Expired"))
    await beat.beat()
    code, out, err = await health(redis_server, prefix)
    assert code == 0, out + err
    assert out.startswith("ok: worker-a on ")
    assert "sending paused (InvalidTimeStamp.Expired)" in out
    assert out.count("\n") == 1

    # A consumer set explicitly must be that consumer's heartbeat, not any on this host.
    code, out, _ = await health(redis_server, prefix, ACKWORKER_CONSUMER="worker-b")
    assert code == 1
    assert "consumer 'worker-b'" in out
    code, _, _ = await health(redis_server, prefix, ACKWORKER_CONSUMER="worker-a")
    assert code == 0

    await beat.clear()
    code, _, _ = await health(redis_server, prefix)
    assert code == 1


async def test_health_without_redis_is_1_with_one_line(prefix: str) -> None:
    done = await anyio.run_process(
        [PYTHON, "-m", "worker", "health"],
        env=worker_env(ACKWORKER_REDIS_URL="redis://127.0.0.1:1/0", ACKWORKER_KEY_PREFIX=prefix),
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1
    assert "Redis unreachable" in done.stderr.decode()


async def test_a_real_worker_process_is_healthy_until_sigterm(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    env = worker_env(
        ACKWORKER_REDIS_URL=redis_server.url,
        ACKWORKER_KEY_PREFIX=prefix,
        ACKWORKER_CONSUMER="proc-1",
        ALIBABA_CLOUD_ACCESS_KEY_ID="testid",
        ALIBABA_CLOUD_ACCESS_KEY_SECRET="testsecret",
    )
    keys = Keys(prefix)
    command = [PYTHON, "-m", "worker", "run"]
    # Its log lines are not read here: a pipe nobody drains could block the worker.
    async with await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL) as proc:

        async def beating() -> bool:
            return [b.consumer for b in await read_beats(redis, keys)] == ["proc-1"]

        await wait_for(beating, timeout_s=20, what="the worker's first heartbeat")
        code, out, _ = await health(redis_server, prefix, ACKWORKER_CONSUMER="proc-1")
        assert code == 0, out
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    assert await redis.exists(keys.heartbeat("proc-1")) == 0
    code, _, _ = await health(redis_server, prefix, ACKWORKER_CONSUMER="proc-1")
    assert code == 1


async def test_a_workers_heartbeat_carries_its_requests_by_action(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, [f"{i:032x}" for i in range(1, 8)])
    settings = make_settings(redis_server.url, prefix)
    api = ScriptedApi()
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
        worker.totals.count_request(POLL)  # as the verifier counts a PollTaskResult page
        await Heartbeat(redis, keys, settings.consumer, worker.vitals).beat()
        [seen] = await read_requests(redis, keys, [settings.consumer])
        status = await collect_status(redis, keys, {DEFAULT_ACCOUNT: settings.rate_limit})
    assert seen == {ACKNOWLEDGE: len(api.calls), POLL: 1}
    assert len(api.calls) >= 1
    [shown] = status["workers"]
    assert shown["requests_by_action"] == seen
    assert status["requests"]["total"] == worker.totals.requests == len(api.calls) + 1
    assert status["requests"]["confirmed"] == 7
    assert status["requests"]["per_confirmed"] == pytest.approx((len(api.calls) + 1) / 7, 1e-3)
