"""The fault-injecting proxy (worker/dev/faultproxy.py) against a real redis-server, with
redis-py as the worker uses it: every fault is seen by the client as Redis would cause it."""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry

from tests.conftest import RedisServer, worker_env
from worker.dev import faultproxy
from worker.dev.children import Child
from worker.dev.faultproxy import FaultProxy, fault_proxy
from worker.dev.sandbox import poll

pytestmark = pytest.mark.anyio


def no_retry(port: int) -> Redis:
    """A client that reports a lost reply instead of quietly sending the command again."""
    return Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    async with fault_proxy("127.0.0.1", redis_server.port, seed=1) as running:
        yield running


@pytest.fixture
async def through(proxy: FaultProxy) -> AsyncIterator[Redis]:
    client = no_retry(proxy.port)
    try:
        yield client
    finally:
        await client.aclose()


async def test_forwards_commands_and_replies_unchanged(
    proxy: FaultProxy, through: Redis, prefix: str
) -> None:
    await through.set(f"{prefix}:k", b"v" * 300_000)
    assert await through.get(f"{prefix}:k") == b"v" * 300_000
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    assert proxy.stats.requests >= 2
    assert proxy.stats.dropped == proxy.stats.cut == proxy.stats.stalled == 0


async def test_a_dropped_reply_is_lost_after_the_command_ran(
    proxy: FaultProxy, through: Redis, redis: Redis, prefix: str
) -> None:
    proxy.next("drop", "INCR")
    with pytest.raises(RedisConnectionError):
        await through.incr(f"{prefix}:n")
    assert await redis.get(f"{prefix}:n") == b"1"  # it ran in Redis
    assert await through.incr(f"{prefix}:n") == 2  # one-shot: the next one goes through
    assert proxy.stats.dropped == 1


async def test_a_client_that_retries_runs_a_dropped_command_twice(
    proxy: FaultProxy, redis: Redis, prefix: str
) -> None:
    # What the worker's own client does (one retry on a connection error): the hazard a
    # settle script must be idempotent against.
    client = Redis(host="127.0.0.1", port=proxy.port, retry=Retry(NoBackoff(), 1))
    try:
        proxy.next("drop", b"INCR")
        assert await client.incr(f"{prefix}:n") == 2
    finally:
        await client.aclose()
    assert await redis.get(f"{prefix}:n") == b"2"


async def test_a_cut_reply_stops_mid_way(
    proxy: FaultProxy, through: Redis, redis: Redis, prefix: str
) -> None:
    await redis.set(f"{prefix}:big", b"x" * 100_000)
    proxy.next("cut", "GET")
    with pytest.raises(RedisConnectionError):
        await through.get(f"{prefix}:big")
    assert await through.get(f"{prefix}:big") == b"x" * 100_000
    assert proxy.stats.cut == 1


async def test_a_stall_holds_replies_for_its_time(proxy: FaultProxy, through: Redis) -> None:
    await through.ping()  # connected before timing
    proxy.set(stall_p=1.0, stall_ms=300)
    started = time.monotonic()
    assert await through.ping()
    assert time.monotonic() - started >= 0.3
    proxy.set(stall_p=0.0)
    started = time.monotonic()
    assert await through.ping()
    assert time.monotonic() - started < 0.3
    assert proxy.stats.stalled == 1


async def test_refuse_closes_connections_then_listens_again_on_the_same_port(
    proxy: FaultProxy, through: Redis
) -> None:
    assert await through.ping()
    port = proxy.port
    proxy.set(refuse=True)
    with pytest.raises(RedisConnectionError):
        await through.ping()  # its pooled connection was closed, a new one is refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    proxy.set(refuse=False)
    with anyio.fail_after(5):
        await proxy.wait_listening()
    assert proxy.port == port
    assert await through.ping()
    assert proxy.stats.refused_periods == 1


async def test_reset_accepts_then_resets(proxy: FaultProxy, through: Redis) -> None:
    proxy.set(reset=True)
    with pytest.raises(RedisConnectionError):
        await through.ping()
    proxy.set(reset=False)
    assert await through.ping()
    assert proxy.stats.reset >= 1


async def test_connections_past_the_bound_are_reset(redis_server: RedisServer) -> None:
    bounded = FaultProxy(("127.0.0.1", redis_server.port), max_connections=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bounded.serve, tg)
        await bounded.wait_listening()
        first, second = no_retry(bounded.port), no_retry(bounded.port)
        try:
            assert await first.ping()
            with pytest.raises(RedisConnectionError):
                await second.ping()
        finally:
            await first.aclose()
            await second.aclose()
        tg.cancel_scope.cancel()
    assert bounded.stats.reset == 1


async def _pattern(redis_server: RedisServer, seed: int) -> list[bool]:
    """Which of 40 PINGs lost their reply, with drops at 30% drawn from ``seed``."""
    lost: list[bool] = []
    async with fault_proxy("127.0.0.1", redis_server.port, seed=seed) as proxy:
        proxy.set(drop_p=0.3, only="PING")  # the connection handshake is never hit
        client = no_retry(proxy.port)
        try:
            for _ in range(40):
                try:
                    await client.ping()
                    lost.append(False)
                except RedisConnectionError:
                    lost.append(True)
        finally:
            await client.aclose()
    return lost


async def test_probabilistic_faults_follow_the_seed(redis_server: RedisServer) -> None:
    first = await _pattern(redis_server, seed=42)
    assert first == await _pattern(redis_server, seed=42)
    assert 0 < sum(first) < 40
    assert first != await _pattern(redis_server, seed=43)


async def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        faultproxy.Faults(drop_p=0.6, cut_p=0.6)
    with pytest.raises(ValueError, match="negative"):
        faultproxy.Faults(stall_ms=-1)
    with pytest.raises(ValueError, match="action"):
        FaultProxy(("127.0.0.1", 1)).next("explode", "GET")


def test_as_a_child_process_controlled_through_its_admin_port(
    redis_server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    args = [
        sys.executable,
        "-m",
        "worker.dev.faultproxy",
        "--target",
        f"127.0.0.1:{redis_server.port}",
    ]
    child = Child("faultproxy", args, env=worker_env(), log=tmp_path / "faultproxy.log")
    try:
        line = re.compile(r"faultproxy listening on ([\d.]+):(\d+) admin ([\d.]+):(\d+)")
        found = poll(lambda: line.search(child.output()), timeout_s=20, what="faultproxy up")
        port, admin = int(found.group(2)), (found.group(3), int(found.group(4)))
        faultproxy.control(admin, {"next": [{"action": "drop", "match": "INCR"}]})
        client = SyncRedis(host="127.0.0.1", port=port, retry=SyncRetry(NoBackoff(), 0))
        with pytest.raises(RedisConnectionError):
            client.incr(f"{prefix}:n")
        assert client.incr(f"{prefix}:n") == 2
        client.close()
        stats = faultproxy.control(admin, {"faults": {"stall_p": 0.0}})
        assert (stats["dropped"], stats["port"]) == (1, port)
        with pytest.raises(ValueError, match="unexpected keyword"):
            faultproxy.control(admin, {"faults": {"bogus": 1}})
    finally:
        assert child.stop() in (0, -15), child.tail()
