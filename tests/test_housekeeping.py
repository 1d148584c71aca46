"""Housekeeping on a real Redis: abandoned leases are swept, gone consumers leave the group,
and a worker that stops cleanly takes its own consumer out; live and busy ones are kept."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import RedisServer
from tests.harness import GatedApi, ScriptedApi, drained, make_settings, running_worker, wait_for
from tests.test_poller import RecordingClock
from worker.clock import SYSTEM_CLOCK, Clock
from worker.retry import redis_backoff_s
from worker.store.connection import redis_now_ms
from worker.store.dedupe import Dedupe, DedupeConfig
from worker.store.enqueue import enqueue
from worker.store.housekeeping import SWEEP_COUNT, Housekeeper, HousekeepingConfig
from worker.store.keys import Keys
from worker.store.source import ensure_group

pytestmark = pytest.mark.anyio

HOUR_MS = 3_600_000


def keeper(
    redis: Redis,
    keys: Keys,
    *streams: str,
    idle_ms: int = 1000,
    heartbeat_ttl_ms: int = 15_000,
    clock: Clock = SYSTEM_CLOCK,
) -> Housekeeper:
    """A housekeeper for consumer ``me``, of ``streams`` (default: the input stream)."""
    config = HousekeepingConfig("me", streams or (keys.tasks,), idle_ms, heartbeat_ttl_ms)
    return Housekeeper(redis, keys, config, clock)


async def consumers(redis: Redis, stream: str, group: str) -> set[str]:
    rows: Any = await redis.xinfo_consumers(stream, group)
    return {r["name"].decode() for r in rows}


# --- Leases ------------------------------------------------------------------------------


async def test_a_round_sweeps_only_leases_expired_for_longer_than_the_grace(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    now_ms = await redis_now_ms(redis, keys.inflight)
    await redis.hset(  # type: ignore[misc]
        keys.inflight,
        mapping={
            "stale": f"gone|b1|{now_ms - HOUR_MS}",  # a dead worker's, long expired
            "garbled": "no deadline",  # blocks nothing (see dedupe): goes too
            "late": f"c1|b2|{now_ms - 100}",  # expired within the grace: its renewer may be late
            "live": f"c1|b3|{now_ms + 60_000}",
        },
    )
    with capture_logs() as logs:
        swept, removed = await keeper(redis, keys).round()
    assert (swept, removed) == (2, 0)
    assert sorted(await redis.hkeys(keys.inflight)) == [b"late", b"live"]  # type: ignore[misc]
    [event] = [e for e in logs if e["event"] == "housekeeping.leases_swept"]
    assert event["count"] == 2


async def test_a_lease_renewed_since_it_was_scanned_is_kept(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    now_ms = await redis_now_ms(redis, keys.inflight)
    seen = f"gone|b1|{now_ms - HOUR_MS}".encode()
    # Taken over by another replica since the scan saw the stale value:
    await redis.hset(keys.inflight, "n1", f"c2|b9|{now_ms + 60_000}")  # type: ignore[misc]
    assert await keeper(redis, keys).sweep({b"n1": seen}) == 0
    assert await redis.hexists(keys.inflight, "n1")  # type: ignore[misc]


async def test_each_round_scans_a_bounded_page(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    total = SWEEP_COUNT * 4
    now_ms = await redis_now_ms(redis, keys.inflight)
    await redis.hset(  # type: ignore[misc]
        keys.inflight, mapping={f"n{i}": f"gone|b|{now_ms - HOUR_MS}" for i in range(total)}
    )
    housekeeper = keeper(redis, keys)
    rounds = [await housekeeper.sweep_leases()]
    assert 0 < rounds[0] < total
    while await redis.hlen(keys.inflight) and len(rounds) < 100:  # type: ignore[misc]
        rounds.append(await housekeeper.sweep_leases())
    assert sum(rounds) == total
    assert len(rounds) > 1


async def test_a_dead_workers_lease_is_swept_once_its_entry_is_dead_lettered(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    """The case of issue 12: a worker dies mid-batch; its entry, delivered too often, is
    dead-lettered at claim time, and nobody ever settles the number's lease."""
    keys = Keys(prefix)
    await ensure_group(redis, keys)
    entry = await redis.xadd(keys.tasks, {"id": "n1"})
    await redis.xreadgroup(keys.group, "gone", {keys.tasks: ">"})
    await redis.xclaim(keys.tasks, keys.group, "gone", 0, [entry], retrycount=9)
    dedupe = Dedupe(redis, keys, "gone", DedupeConfig(ttl_s=0, lease_ms=1))
    await dedupe.reserve(["n1"], b"\0" * 12, "b1")
    settings = make_settings(redis_server.url, prefix)
    async with running_worker(settings, redis, ScriptedApi()):

        async def swept() -> bool:
            return bool(await redis.xlen(keys.dead)) and not await redis.hlen(keys.inflight)  # type: ignore[misc]

        await wait_for(swept, what="the dead-lettered entry's lease swept")
    [dead] = await redis.xrange(keys.dead)
    assert dead[1][b"reason"] == b"redelivered_too_often"


# --- Consumers ---------------------------------------------------------------------------


async def join(redis: Redis, keys: Keys, stream: str, consumer: str, entries: int = 0) -> None:
    """``consumer`` joins ``stream``'s group, holding ``entries`` pending entries."""
    await redis.xgroup_createconsumer(stream, keys.group, consumer)
    for n in range(entries):
        await redis.xadd(stream, {"id": f"{consumer}{n}"})
    if entries:
        await redis.xreadgroup(keys.group, consumer, {stream: ">"}, count=entries)


async def test_gone_consumers_leave_every_watched_stream_and_the_others_stay(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    lane = keys.for_account("eu")
    for k in (keys, lane):
        await ensure_group(redis, k)
        await join(redis, keys, k.tasks, "gone")
        await join(redis, keys, k.tasks, "me")
    await join(redis, keys, keys.tasks, "busy", entries=1)
    await join(redis, keys, keys.tasks, "alive")
    await redis.hset(keys.heartbeat("alive"), "consumer", "alive")  # type: ignore[misc]
    await redis.zadd(keys.workers, {"alive": await redis_now_ms(redis, keys.workers) + 60_000})
    housekeeper = keeper(redis, keys, keys.tasks, lane.tasks, idle_ms=50, heartbeat_ttl_ms=50)

    async def idle_long_enough() -> bool:
        rows: Any = await redis.xinfo_consumers(keys.tasks, keys.group)
        return all(int(r["idle"]) > housekeeper.consumer_idle_ms for r in rows)

    await wait_for(idle_long_enough, what="the consumers idle past the bound")
    await join(redis, keys, keys.tasks, "fresh")  # just joined: idle 0
    with capture_logs() as logs:
        assert await housekeeper.round() == (0, 2)
    assert await consumers(redis, keys.tasks, keys.group) == {"me", "busy", "alive", "fresh"}
    assert await consumers(redis, lane.tasks, keys.group) == {"me"}
    removed = [
        (e["consumer"], e["stream"]) for e in logs if e["event"] == "housekeeping.consumer_removed"
    ]
    assert removed == [("gone", keys.tasks), ("gone", lane.tasks)]


async def test_the_script_keeps_a_consumer_that_holds_entries(redis: Redis, prefix: str) -> None:
    """remove_self has no check of its own before the script: the script's own re-check of
    the pending count is what keeps a consumer that has just read entries."""
    keys = Keys(prefix)
    await ensure_group(redis, keys)
    await join(redis, keys, keys.tasks, "me", entries=2)
    housekeeper = keeper(redis, keys)
    assert await housekeeper.remove_self() == 0
    assert await consumers(redis, keys.tasks, keys.group) == {"me"}
    await redis.xack(keys.tasks, keys.group, *[r[0] for r in await redis.xrange(keys.tasks)])
    assert await housekeeper.remove_self() == 1
    assert await consumers(redis, keys.tasks, keys.group) == set()


async def test_a_missing_stream_is_nothing_to_tidy(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    assert await keeper(redis, keys).round() == (0, 0)


async def test_a_redis_failure_is_logged_and_backed_off_never_raised(prefix: str) -> None:
    dead_redis = Redis.from_url("redis://127.0.0.1:1/0")
    clock = RecordingClock()
    housekeeper = keeper(dead_redis, Keys(prefix), idle_ms=1000, clock=clock)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(housekeeper.run)

            async def failed_three_times() -> bool:
                return len([e for e in logs if e["event"] == "housekeeping.failed"]) >= 3

            await wait_for(failed_three_times, what="three failed rounds")
            tg.cancel_scope.cancel()
    await dead_redis.aclose()
    assert clock.sleeps[:3] == [housekeeper.interval_s, redis_backoff_s(1), redis_backoff_s(2)]
    failures = [e for e in logs if e["event"] == "housekeeping.failed"]
    assert [e["failures"] for e in failures[:3]] == [1, 2, 3]
    assert "ConnectionError" in failures[0]["error"]


# --- A worker's own consumer -------------------------------------------------------------


async def test_a_clean_stop_takes_the_workers_consumer_out_of_the_group(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    settings = make_settings(redis_server.url, prefix)
    await enqueue(redis, keys, ["n1", "n2"])
    async with running_worker(settings, redis, ScriptedApi()):
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
        assert settings.consumer in await consumers(redis, keys.tasks, keys.group)
    assert await consumers(redis, keys.tasks, keys.group) == set()


async def test_a_stop_with_entries_still_pending_keeps_the_consumer(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    settings = make_settings(redis_server.url, prefix, shutdown_grace_s=0.05)
    await enqueue(redis, keys, ["n1"])
    api = GatedApi()  # never answers: the request may have reached the API, the entry stays
    async with running_worker(settings, redis, api):

        async def sent() -> bool:
            return bool(api.calls)

        await wait_for(sent, what="the request sent")
    assert await consumers(redis, keys.tasks, keys.group) == {settings.consumer}
    pending: Any = await redis.xpending(keys.tasks, keys.group)
    assert pending["pending"] == 1
