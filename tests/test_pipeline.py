"""Pipeline behaviours on a real redis-server, with a scripted API at the Acknowledger seam."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import RedisServer
from tests.harness import (
    GatedApi,
    ScriptedApi,
    backlog,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
    with_consumer,
)
from worker.api.client import AckResult
from worker.entries import DEFAULT_ACCOUNT, Entry
from worker.pipeline.runner import Worker
from worker.store.enqueue import InvalidIdError, enqueue
from worker.store.keys import Keys
from worker.store.settle import Settler

pytestmark = pytest.mark.anyio

IDS = [f"{i:032x}" for i in range(1, 41)]


POISON: list[dict[bytes, bytes]] = [
    {b"task_no": b"T-missing"},
    {b"id": b""},
    {b"id": b"x" * 65},
    {b"id": b"\xff\xfe\x00garbage"},
    {b"id": "\u4e2d\u6587".encode()},
    {b"id": b"abc; rm -rf /"},
    {b"id": b"1' OR '1'='1"},
    {b"id": b"a" * 1_000_000},
    {f"f{i}".encode(): b"v" for i in range(300)},
]


async def test_invalid_entries_are_dead_lettered_and_good_ones_flow(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:10])
    for fields in POISON:
        await redis.xadd(keys.tasks, fields)  # type: ignore[arg-type]
    api = ScriptedApi()
    async with running_worker(make_settings(redis_server.url, prefix), redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    dead = await stream_fields(redis, keys.dead)
    assert len(dead) == len(POISON)
    assert {d["reason"] for d in dead} == {"invalid_id"}
    assert all(len(d["raw"]) <= 310 for d in dead)
    assert any("missing" in d["error"] for d in dead)
    assert any("65 bytes" in d["error"] for d in dead)
    assert sorted(n for call in api.calls for n in call) == sorted(IDS[:10])
    assert worker.totals.confirmed == 10
    assert worker.totals.dead == {"invalid_id": len(POISON)}


async def test_confirmed_number_is_a_duplicate_later_and_across_replicas(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    api = ScriptedApi()
    settings = make_settings(redis_server.url, prefix)
    await enqueue(redis, keys, IDS[:5])
    async with running_worker(settings, redis, api):
        await wait_for(lambda: drained(redis, prefix), what="first pass settled")
    await enqueue(redis, keys, IDS[:5])
    other = with_consumer(settings, f"{prefix}-c2")
    async with running_worker(other, redis, api) as replica:
        await wait_for(lambda: drained(redis, prefix), what="second pass settled")
    assert len([n for call in api.calls for n in call]) == 5
    assert replica.totals.duplicates == 5
    assert replica.totals.confirmed == 0


async def test_same_number_in_flight_is_not_sent_twice(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    release = anyio.Event()
    calls: list[list[str]] = []

    class SlowApi:
        async def acknowledge(self, ids: Sequence[str]) -> AckResult:
            calls.append(list(ids))
            await release.wait()
            return AckResult(len(set(ids)), f"req-{len(calls)}")

    settings = make_settings(redis_server.url, prefix, batch_size=1, concurrency=2)
    await enqueue(redis, keys, [IDS[0], IDS[0]])
    async with running_worker(settings, redis, SlowApi()) as worker:

        async def one_call_in_flight() -> bool:
            return len(calls) == 1 and len(worker.lanes[DEFAULT_ACCOUNT].holdings) == 2

        await wait_for(one_call_in_flight, what="first request in flight")
        release.set()
        await wait_for(lambda: drained(redis, prefix), what="both entries settled")
    assert calls == [[IDS[0]]]
    assert worker.totals.confirmed == 1
    assert worker.totals.duplicates == 1


async def test_entry_delivered_too_often_is_dead_lettered(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, [IDS[0]], domain="example.com")
    rows = await redis.xreadgroup(keys.group, "crashed", {keys.tasks: ">"}, count=1)
    entry_id = rows[0][1][0][0]
    # As if six replicas had crashed on it in turn.
    await redis.xclaim(keys.tasks, keys.group, "crashed", 0, [entry_id], idle=60_000, retrycount=6)
    api = ScriptedApi()
    async with running_worker(make_settings(redis_server.url, prefix), redis, api):
        await wait_for(lambda: drained(redis, prefix), what="poison entry settled")
    dead = await stream_fields(redis, keys.dead)
    assert [(d["id"], d["reason"], d["domain"]) for d in dead] == [
        (IDS[0], "redelivered_too_often", "example.com")
    ]
    assert api.calls == []


async def test_stalled_consumer_entries_are_claimed_and_finished(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:6])
    await redis.xreadgroup(keys.group, "crashed", {keys.tasks: ">"}, count=6)
    api = ScriptedApi()
    settings = make_settings(redis_server.url, prefix, claim_idle_ms=1000)
    async with running_worker(settings, redis, api):
        await wait_for(lambda: drained(redis, prefix), what="claimed entries settled")
    assert sorted(n for call in api.calls for n in call) == sorted(IDS[:6])


async def test_hard_stop_hands_back_unsent_and_keeps_sent_pending(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:30])
    api = GatedApi()
    calls = api.calls

    settings = make_settings(
        redis_server.url, prefix, batch_size=10, concurrency=1, shutdown_grace_s=0.2
    )
    async with running_worker(settings, redis, api) as worker:

        async def stuck() -> bool:
            return len(calls) == 1 and len(worker.lanes[DEFAULT_ACCOUNT].holdings) == 30

        await wait_for(stuck, what="one request stuck, everything read")
    # The grace period expired with one request in flight: its 10 entries stay pending
    # for a claim; the 20 never sent were handed back as new entries.
    assert worker.totals.handed_back == 20
    assert await backlog(redis, prefix) == 30
    pending = await redis.xpending(keys.tasks, keys.group)
    assert pending["pending"] == 10
    ids_in_stream = [f["id"] for f in await stream_fields(redis, keys.tasks)]
    assert sorted(ids_in_stream) == sorted(IDS[:30])


async def test_enqueue_refuses_invalid_ids_before_writing(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    with pytest.raises(InvalidIdError, match="bad id!"):
        await enqueue(redis, keys, [IDS[0], "bad id!"])
    assert await redis.exists(keys.tasks) == 0


async def test_prefetch_is_bounded_by_concurrency_and_batch_size(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    many = [f"{i:032x}" for i in range(500)]
    await enqueue(redis, keys, many)
    api = GatedApi()
    calls = api.calls

    settings = make_settings(
        redis_server.url, prefix, batch_size=10, concurrency=2, shutdown_grace_s=0.1
    )
    async with running_worker(settings, redis, api) as worker:

        async def saturated() -> bool:
            return len(calls) == 2 and len(worker.lanes[DEFAULT_ACCOUNT].holdings) >= 40

        await wait_for(saturated, what="both senders stuck and the queue full")
        # Two batches sent, two queued, one open: 2 x concurrency x batch_size + batch_size.
        summary = await redis.xpending(keys.tasks, keys.group)
        assert summary["pending"] == len(worker.lanes[DEFAULT_ACCOUNT].holdings) <= 50
    assert await backlog(redis, prefix) == 500


async def test_a_hand_back_releases_only_its_own_batchs_lease(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, ["n1", "n1", "n2"])
    read = await redis.xreadgroup(keys.group, "c1", {keys.tasks: ">"}, count=10)
    ids = [entry_id for entry_id, _ in read[0][1]]
    # n1 is in flight in batch b1; its duplicate was never reserved. n2's batch is b2.
    await redis.hset(keys.inflight, mapping={"n1": "c1|b1|99999999999999", "n2": "c1|b2|9"})  # type: ignore[misc]
    duplicate = Entry(ids[1], "n1")
    own = Entry(ids[2], "n2", lease="b2")
    moved = await Settler(redis, keys, dedupe_ttl_s=60, consumer="c1").hand_back([duplicate, own])
    assert moved == 2
    leases = await redis.hgetall(keys.inflight)  # type: ignore[misc]
    assert leases == {b"n1": b"c1|b1|99999999999999"}  # b1's request still owns n1


async def test_a_batch_abandoned_on_redis_keeps_what_its_recheck_holds(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    seconds, _ = await redis.time()
    # busy1 is in flight on another replica for a moment longer; go1 is free.
    lease = f"other|b9|{(seconds + 2) * 1000}"
    await redis.hset(keys.inflight, mapping={"busy1": lease})  # type: ignore[misc]
    await enqueue(redis, keys, ["busy1", "go1"])

    def behave(ids: Sequence[str], n: int) -> AckResult:
        if n == 1:
            raise RedisConnectionError("Connection closed by server.")  # Redis lost mid-batch
        return AckResult(len(ids), f"req-{n}")

    api = ScriptedApi(behave)
    settings = make_settings(redis_server.url, prefix, linger_ms=100)
    async with running_worker(settings, redis, api) as worker:
        holdings = worker.lanes[DEFAULT_ACCOUNT].holdings

        async def abandoned() -> bool:
            return len(api.calls) >= 1 and "go1" not in {e.number for e in holdings.held()}

        await wait_for(abandoned, what="the batch abandoned")
        # The recheck of busy1 still holds it: the lease renewer keeps it from a claim.
        assert [e.number for e in holdings.held()] == ["busy1"]
        await wait_for(lambda: _confirmed(worker, 1), what="busy1 confirmed by its recheck")
    assert api.calls[-1] == ["busy1"]


async def _confirmed(worker: Worker, count: int) -> bool:
    return worker.totals.confirmed >= count
