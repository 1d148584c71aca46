"""Regression tests for defects the chaos suite and a review found in the pipeline."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import RedisServer
from tests.harness import (
    GatedApi,
    ScriptedApi,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
    with_consumer,
)
from worker.entries import Entry, Holdings
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.store.leases import LeaseRenewer

pytestmark = pytest.mark.anyio

IDS = [f"{i:032x}" for i in range(1, 31)]


async def test_entries_held_past_claim_idle_are_not_claimed_by_another_replica(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    await enqueue(redis, Keys(prefix), IDS[:10])
    holder_api, other_api = GatedApi(), ScriptedApi()
    settings = make_settings(redis_server.url, prefix, claim_idle_ms=1000, batch_size=10)
    async with running_worker(settings, redis, holder_api) as holder:

        async def one_request_in_flight() -> bool:
            return len(holder_api.calls) == 1

        await wait_for(one_request_in_flight, what="request in flight")
        other = with_consumer(settings, f"{prefix}-c2")
        async with running_worker(other, redis, other_api):
            # What is under test is elapsed time itself: three claim periods pass while the
            # first request is still held, and the other replica must claim nothing.
            await anyio.sleep(3.0)
            assert other_api.calls == []
            holder_api.release.set()
            await wait_for(lambda: drained(redis, prefix), what="settled by the holder")
    assert holder.totals.confirmed == 10
    assert await redis.xlen(Keys(prefix).reconcile) == 0
    assert await redis.xlen(Keys(prefix).dead) == 0


async def test_keeper_refreshes_held_entries_without_counting_a_delivery(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:10])
    api = GatedApi()
    settings = make_settings(redis_server.url, prefix, claim_idle_ms=1000, batch_size=10)
    async with running_worker(settings, redis, api):

        async def one_request_in_flight() -> bool:
            return len(api.calls) == 1

        await wait_for(one_request_in_flight, what="request in flight")
        # Elapsed time is what is under test: three claim periods with the request held.
        await anyio.sleep(3.0)
        pending = await redis.xpending_range(keys.tasks, keys.group, "-", "+", 100)
        lease: bytes | None = await redis.hget(keys.inflight, IDS[0])  # type: ignore[misc]
        api.release.set()
    assert len(pending) == 10
    assert {p["consumer"].decode() for p in pending} == {settings.consumer}
    # Refreshed by XCLAIM JUSTID (not a delivery) rather than claimed again by anyone.
    assert {p["times_delivered"] for p in pending} == {1}
    assert all(p["time_since_delivered"] < 1000 for p in pending)
    assert lease is not None
    owner, _, deadline_ms = lease.decode().rpartition("|")
    assert owner.startswith(f"{settings.consumer}|")
    seconds, micros = await redis.time()
    # The lease (claim_idle_ms = 1 s) was extended while the request was held for 3 s.
    assert int(deadline_ms) > seconds * 1000 + micros // 1000


async def test_a_batch_of_thousands_of_duplicates_settles(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    # Upstream pollers re-push what they have not seen acknowledged: one batch of three
    # numbers can carry thousands of entries, more than Lua can unpack in one call.
    numbers = [IDS[i % 3] for i in range(9000)]
    await enqueue(redis, Keys(prefix), numbers)
    api = ScriptedApi()
    settings = make_settings(redis_server.url, prefix, batch_size=1000, concurrency=4)
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="all settled")
    assert worker.totals.confirmed + worker.totals.duplicates == 9000
    assert worker.totals.confirmed == 3


async def test_stream_lost_with_a_redis_restart_is_recreated(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:5])
    api = ScriptedApi()
    async with running_worker(make_settings(redis_server.url, prefix), redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="first numbers settled")
        await redis.delete(keys.tasks)  # as if Redis restarted without persistence
        await redis.xadd(keys.tasks, {"id": IDS[5]})  # a producer's plain XADD, no group

        async def confirmed_six() -> bool:
            return worker.totals.confirmed == 6

        await wait_for(confirmed_six, what="the group recreated and the new number confirmed")
    dead = await stream_fields(redis, keys.dead)
    assert dead == []


async def test_keeper_touches_only_entries_still_ours(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:4])
    rows = await redis.xreadgroup(keys.group, "me", {keys.tasks: ">"}, count=3)
    await redis.xreadgroup(keys.group, "peer", {keys.tasks: ">"}, count=1)
    mine = [Entry(eid, fields[b"id"].decode(), lease="b1") for eid, fields in rows[0][1]]
    mine[1].lease = "b0"  # covered by another batch than the lease in Redis
    everything = await redis.xpending_range(keys.tasks, keys.group, "-", "+", 10)
    peer_entry = Entry(everything[-1]["message_id"], IDS[3])
    holdings = Holdings()
    renewer = LeaseRenewer(redis, keys, "me", holdings, claim_idle_ms=1000)
    old = {IDS[0]: "me|b1|1", IDS[1]: "me|b1|1", IDS[2]: "other|b1|1"}
    await redis.hset(keys.inflight, mapping=old)  # type: ignore[misc]
    kept = await renewer.touch([*mine, peer_entry])
    after = await redis.xpending_range(keys.tasks, keys.group, "-", "+", 10)
    leases = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.inflight)).items()}  # type: ignore[misc]
    assert leases[IDS[0]].startswith("me|b1|")
    assert leases[IDS[0]] != "me|b1|1"  # extended
    assert leases[IDS[1]] == "me|b1|1"  # its entry is covered by b0: left to expire
    assert leases[IDS[2]] == "other|b1|1"  # another consumer's
    assert kept == 3
    assert [p["consumer"] for p in after] == [b"me", b"me", b"me", b"peer"]
    assert [p["times_delivered"] for p in after] == [1, 1, 1, 1]
