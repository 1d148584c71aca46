"""Every outcome recorded exactly once: the settle script and the router's move on a real
redis-server (issue 12, defects 2, 3, 11 and 14).

A lost reply is a repeat of the same call; a stalled consumer that lost its entries is one
whose entries were XCLAIMed by another; a broken key is a string where a stream or hash goes.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.entries import DEFAULT_ACCOUNT, Entry
from worker.ids import digests
from worker.pipeline.router import Router
from worker.store.dedupe import Dedupe, DedupeConfig, Reservation
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.store.settle import Settlement, Settler, leases_of
from worker.store.source import SourceConfig, StreamSource
from worker.totals import Totals

pytestmark = pytest.mark.anyio

N1, N2 = f"{1:032x}", f"{2:032x}"
FAR = "99999999999999"  # a lease deadline (ms) that never passes


async def read(redis: Redis, keys: Keys, numbers: list[str], batch: str = "c1-1") -> list[Entry]:
    """Enqueue ``numbers`` and read them as consumer c1, leased by ``batch``."""
    await enqueue(redis, keys, numbers)
    reply = await redis.xreadgroup(keys.group, "c1", {keys.tasks: ">"}, count=100)
    return [Entry(i, f[b"id"].decode(), lease=batch) for i, f in reply[0][1]]


async def pending_on(redis: Redis, keys: Keys, entry: Entry) -> str | None:
    """The consumer ``entry`` is pending on, None when it is not pending."""
    rows: Any = await redis.xpending_range(
        keys.tasks, keys.group, min=entry.entry_id, max=entry.entry_id, count=1
    )
    return rows[0]["consumer"].decode() if rows else None


def outcome(entries: list[Entry], confirmed: list[str]) -> Settlement:
    """A short batch's settlement: ``confirmed`` remembered, the rest dead (and remembered
    with their dead letters), one record."""
    s = Settlement([e.entry_id for e in entries], digests(confirmed), leases_of(entries))
    dead = [e.number for e in entries if e.number not in confirmed]
    s.dead = [{"id": number, "reason": "unconfirmed"} for number in dead]
    s.decided = digests(dead)
    s.reconcile = [{"batch_id": "c1-1", "kind": "shortfall"}]
    return s


async def confirmed(redis: Redis, keys: Keys, number: str) -> bool:
    """What another consumer reserving ``number`` finds: confirmed within the TTL."""
    dedupe = Dedupe(redis, keys, "c2", DedupeConfig(ttl_s=60, lease_ms=1000))
    [status] = await dedupe.reserve([number], digests([number]), "c2-1")
    return status is Reservation.CONFIRMED


async def test_the_same_settlement_twice_writes_one_dead_letter_and_one_record(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    entries = await read(redis, keys, [N1, N2])
    settler = Settler(redis, keys, dedupe_ttl_s=60, consumer="c1")
    s = outcome(entries, [N1])
    first = await settler.settle(s)
    again = await settler.settle(s)  # its first reply lost: redis-py sends the call again
    assert await redis.xlen(keys.dead) == 1
    assert await redis.xlen(keys.reconcile) == 1
    assert await redis.xlen(keys.tasks) == 0
    assert (first.applied, first.repeated) == (True, False)
    assert (again.applied, again.repeated) == (True, True)
    assert await confirmed(redis, keys, N1)
    assert await confirmed(redis, keys, N2)
    # Once the stored reply has expired, a repeat finds the entries settled: no-op too.
    late = await settler.settle(outcome(entries, [N1]))
    assert (late.applied, late.not_owned) == (False, 2)
    assert await redis.xlen(keys.dead) == 1
    assert await redis.xlen(keys.reconcile) == 1


async def test_a_settlement_without_entries_is_written_once(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    settler = Settler(redis, keys, dedupe_ttl_s=60, consumer="c1")
    s = Settlement(dead=[{"id": "x", "reason": "test"}], release={N1: "c1-1"})
    await redis.hset(keys.inflight, N1, f"c1|c1-1|{FAR}")  # type: ignore[misc]
    results = [await settler.settle(s) for _ in range(3)]
    assert await redis.xlen(keys.dead) == 1
    assert not await redis.hexists(keys.inflight, N1)  # type: ignore[misc]
    assert [(r.applied, r.repeated) for r in results] == [(True, False), (True, True), (True, True)]


@pytest.mark.parametrize("broken", ["dead", "reconcile"])
async def test_a_wrong_type_outcome_key_fails_the_settle_with_nothing_written(
    redis: Redis, prefix: str, broken: str
) -> None:
    keys = Keys(prefix)
    entries = await read(redis, keys, [N1, N2])
    await redis.hset(keys.inflight, mapping={N1: f"c1|c1-1|{FAR}", N2: f"c1|c1-1|{FAR}"})  # type: ignore[misc]
    key = getattr(keys, broken)
    await redis.set(key, "not a stream")
    settler = Settler(redis, keys, dedupe_ttl_s=60, consumer="c1")
    with pytest.raises(ResponseError) as raised:
        await settler.settle(outcome(entries, [N1]))
    # Nothing acknowledged: both entries are still in the stream, pending here.
    assert await redis.xlen(keys.tasks) == 2
    assert [await pending_on(redis, keys, e) for e in entries] == ["c1", "c1"]
    # And nothing written at all: no outcome, no dedupe memory, the leases still held.
    assert await redis.exists(keys.dead if broken == "reconcile" else keys.reconcile) == 0
    assert await redis.hlen(keys.inflight) == 2  # type: ignore[misc]
    assert not await confirmed(redis, keys, N1)
    assert key in str(raised.value)


async def test_a_settle_by_a_consumer_that_lost_its_entry_keeps_only_the_answer(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    entries = await read(redis, keys, [N1, N2])
    await redis.hset(keys.inflight, mapping={N1: f"c1|c1-1|{FAR}", N2: f"c1|c1-1|{FAR}"})  # type: ignore[misc]
    # c1 stalled past claim_idle_ms: c2 claimed N1's entry.
    await redis.xclaim(keys.tasks, keys.group, "c2", 0, [entries[0].entry_id])
    totals = Totals()
    settler = Settler(redis, keys, dedupe_ttl_s=60, consumer="c1", totals=totals)
    with structlog.testing.capture_logs() as logs:
        result = await settler.settle(outcome(entries, [N1]))
    # No outcome and no acknowledgement: the outcomes are c2's to write.
    assert await redis.xlen(keys.dead) == 0
    assert await redis.xlen(keys.reconcile) == 0
    assert await redis.xlen(keys.tasks) == 2
    assert [await pending_on(redis, keys, e) for e in entries] == ["c2", "c1"]
    # The API's answer is kept: c2 settles N1 as a duplicate, without a request. N2's dead
    # letter was not written, so neither is its memory: its holder decides it.
    assert await confirmed(redis, keys, N1)
    assert await redis.hlen(keys.inflight) == 0  # type: ignore[misc]  # c1's own leases
    assert not await confirmed(redis, keys, N2)
    assert (result.applied, result.not_owned) == (False, 1)
    assert totals.not_owned == 1
    [event] = [e for e in logs if e["event"] == "settle.not_owner"]
    assert (event["log_level"], event["count"], event["entries"]) == ("warning", 1, 2)


async def test_a_settle_leaves_another_batchs_lease_of_the_same_consumer(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    entries = await read(redis, keys, [N1, N2], batch="c1-1")
    # N1's lease from batch c1-1 expired; batch c1-12 of the same consumer took it since.
    leases = {N1: f"c1|c1-12|{FAR}", N2: f"c1|c1-1|{FAR}"}
    await redis.hset(keys.inflight, mapping=leases)  # type: ignore[misc]
    s = Settlement([e.entry_id for e in entries], digests([N1, N2]), leases_of(entries))
    assert s.release == {N1: "c1-1", N2: "c1-1"}
    await Settler(redis, keys, dedupe_ttl_s=60, consumer="c1").settle(s)
    held = await redis.hgetall(keys.inflight)  # type: ignore[misc]
    assert held == {N1.encode(): f"c1|c1-12|{FAR}".encode()}


async def test_a_hand_back_with_a_wrong_type_lease_hash_moves_nothing(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    entries = await read(redis, keys, [N1])
    await redis.set(keys.inflight, "not a hash")
    with pytest.raises(ResponseError) as raised:
        await Settler(redis, keys, dedupe_ttl_s=60, consumer="c1").hand_back(entries)
    assert await redis.xlen(keys.tasks) == 1
    assert await pending_on(redis, keys, entries[0]) == "c1"
    assert keys.inflight in str(raised.value)


async def router_reading(redis: Redis, keys: Keys) -> tuple[Router, list[Entry]]:
    """A router of two accounts and what it read: one entry of each."""
    await enqueue(redis, keys, [N1])
    await enqueue(redis, keys, [N2], account="eu")
    settler = Settler(redis, keys, dedupe_ttl_s=60, consumer="c1")
    accounts = frozenset({DEFAULT_ACCOUNT, "eu"})
    source = StreamSource(redis, keys, settler, SourceConfig("c1", 1000, 5, accounts))
    targets = {a: keys.account_stream(a) for a in accounts}
    router = Router(
        redis, source, targets, consumer="c1", claim_every_ms=1000, stopping=anyio.Event()
    )
    return router, await source.read(10, None)


async def test_a_move_to_a_wrong_type_account_stream_leaves_the_entries_pending(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await redis.set(keys.account_stream("eu"), "not a stream")
    router, entries = await router_reading(redis, keys)
    with pytest.raises(ResponseError) as raised:
        await router.move(entries)
    # Neither entry moved, both still pending here: claimed and moved once the key is mended.
    assert await redis.xlen(keys.tasks) == 2
    assert [await pending_on(redis, keys, e) for e in entries] == ["c1", "c1"]
    assert await redis.exists(keys.account_stream(DEFAULT_ACCOUNT)) == 0
    assert keys.account_stream("eu") in str(raised.value)


async def test_a_repeated_move_moves_nothing_again(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    router, entries = await router_reading(redis, keys)
    assert await router.move(entries) == 2
    assert await router.move(entries) == 0  # its first reply lost: sent again
    assert await redis.xlen(keys.tasks) == 0
    for account in (DEFAULT_ACCOUNT, "eu"):
        assert await redis.xlen(keys.account_stream(account)) == 1
