"""The books of a run under Redis faults: a scripted API that keeps its own, a plan of what
each number should become, and the invariant checks read back from Redis.

Each enqueued number must end in exactly one of three places, read from Redis's own records:
*confirmed* (remembered in the dedupe memory, which only a confirmed settlement writes),
*dead-lettered* (``<prefix>:dead``) or *recorded short* (named in a ``<prefix>:reconcile``
record). Besides: no dead letter written twice (same number and source entry), no reconcile
record written twice (same batch id and numbers), nothing pending in the group, no lease left in
``<prefix>:inflight``, and no number sent again after the API confirmed it unless a
shortfall explains the resend.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio.lowlevel
from redis.asyncio import Redis

from worker.api.client import AckResult
from worker.errors import PermanentApiError
from worker.ids import digest
from worker.store.dedupe import SHARDS
from worker.store.keys import Keys


@dataclass(slots=True)
class Plan:
    """What each number should become: ``reject`` ones dead-lettered ``rejected``, ``short``
    ones recorded short (the API never confirms them), the rest confirmed. ``entries`` is the
    order they are enqueued in, duplicates included."""

    ok: list[str]
    reject: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)

    @property
    def numbers(self) -> list[str]:
        return [*self.ok, *self.reject, *self.short]

    @classmethod
    def random(cls, rng: random.Random, tag: str, count: int, duplicates: int) -> Plan:
        """``count`` numbers, about 10% rejected and 10% short, and ``duplicates`` extra
        entries of numbers already planned, all in a shuffled order."""
        numbers = [f"{tag}{i:06x}".rjust(32, "0") for i in range(count)]
        kinds = rng.choices(("ok", "reject", "short"), weights=(8, 1, 1), k=count)
        plan = cls(
            ok=[n for n, k in zip(numbers, kinds, strict=True) if k == "ok"],
            reject=[n for n, k in zip(numbers, kinds, strict=True) if k == "reject"],
            short=[n for n, k in zip(numbers, kinds, strict=True) if k == "short"],
        )
        plan.entries = numbers + rng.choices(numbers, k=duplicates)
        rng.shuffle(plan.entries)
        return plan


class BookedApi:
    """A fake at the Acknowledger seam with the books of a real API: a request holding a
    ``reject`` number is refused (a 4xx with a Code, so the worker splits it down to that
    number); ``short`` numbers are never confirmed (count 0); others are confirmed once, and
    a number sent again after that counts 0 and is noted in :attr:`resent`."""

    def __init__(self, plan: Plan) -> None:
        self.reject, self.short = set(plan.reject), set(plan.short)
        self.confirmed: set[str] = set()
        self.resent: Counter[str] = Counter()
        self.calls = 0

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        request_id = f"req-{self.calls}"
        if self.reject.intersection(ids):
            raise PermanentApiError("InvalidParameter", "rejected by script", request_id=request_id)
        fresh = 0
        for number in set(ids) - self.short:
            if number in self.confirmed:
                self.resent[number] += 1
            else:
                self.confirmed.add(number)
                fresh += 1
        return AckResult(fresh, request_id)


@dataclass(slots=True)
class Books:
    """What Redis recorded for one key prefix."""

    remembered: set[str]
    dead: Counter[tuple[str, str]]
    """(number, source entry id) -> dead letters written for it."""
    dead_reasons: dict[str, set[str]]
    records: list[tuple[str, list[str]]]
    """Every reconcile record: its batch id and the numbers it names (``ids``)."""
    pending: int
    leases: dict[str, str]
    backlog: int


async def _remembered(redis: Redis, keys: Keys, numbers: Sequence[str]) -> set[str]:
    fields: set[tuple[int, bytes]] = set()
    async for key in redis.scan_iter(match=f"{keys.seen_prefix}*", count=1000):
        shard = int(key.rsplit(b":", 1)[1])
        names: list[bytes] = await redis.hkeys(key)  # type: ignore[misc]  # redis-py's sync|async union
        fields.update((shard, name) for name in names)
    found = set()
    for number in numbers:
        d = digest(number)
        if ((d[0] * 256 + d[1]) % SHARDS, d[2:12]) in fields:
            found.add(number)
    return found


async def read_books(redis: Redis, keys: Keys, numbers: Sequence[str]) -> Books:
    """Read the outcome records, the group's pending list and the leases of ``keys``."""
    dead: Counter[tuple[str, str]] = Counter()
    reasons: dict[str, set[str]] = {}
    for _, row in await redis.xrange(keys.dead):
        number, source = row.get(b"id", b"").decode(), row.get(b"source", b"").decode()
        dead[(number, source)] += 1
        reasons.setdefault(number, set()).add(row.get(b"reason", b"?").decode())
    records = [
        (row[b"batch_id"].decode(), json.loads(row[b"ids"]))
        for _, row in await redis.xrange(keys.reconcile)
    ]
    summary = await redis.xpending(keys.tasks, keys.group)
    held: dict[bytes, bytes] = await redis.hgetall(keys.inflight)  # type: ignore[misc]
    leases = {k.decode(): v.decode() for k, v in held.items()}
    return Books(
        remembered=await _remembered(redis, keys, numbers),
        dead=dead,
        dead_reasons=reasons,
        records=records,
        pending=int(summary["pending"]),
        leases=leases,
        backlog=int(await redis.xlen(keys.tasks)),
    )


def problems(plan: Plan, books: Books, api: BookedApi) -> list[str]:
    """Every way the books break the invariant; empty when they hold."""
    dead = {number for number, _ in books.dead}
    short = {n for _, ids in books.records for n in ids}
    found: list[str] = []
    for number in plan.numbers:
        # Dedupe memory keeps every outcome (confirmed, not listed, dead-lettered): a number
        # remembered with neither a dead letter nor a record was confirmed.
        places = [
            name
            for name, there in (
                ("dead-lettered", number in dead),
                ("recorded short", number in short),
            )
            if there
        ] or (["confirmed"] if number in books.remembered else [])
        if len(places) != 1:
            found.append(f"{number} is {' and '.join(places) or 'nowhere'}")
    found += _misplaced(plan, books, api, short)
    found += [
        f"dead letter of {n} from entry {s} written {c} times"
        for (n, s), c in books.dead.items()
        if c > 1
    ]
    # A batch split in halves may record each half short under the batch's id; the same
    # batch id naming the same numbers twice is one record written twice.
    records = Counter((batch_id, tuple(ids)) for batch_id, ids in books.records)
    found += [
        f"reconcile record of batch {b} ({len(ids)} numbers) written {c} times"
        for (b, ids), c in records.items()
        if c > 1
    ]
    if books.pending or books.backlog:
        found.append(f"{books.backlog} entries left in the stream, {books.pending} pending")
    if books.leases:
        found.append(f"{len(books.leases)} leases left, e.g. {sorted(books.leases.items())[:2]}")
    unexplained = sorted(n for n in api.resent if n not in short)
    if unexplained:
        found.append(f"{len(unexplained)} confirmed numbers sent again, e.g. {unexplained[:3]}")
    return found


def _misplaced(plan: Plan, books: Books, api: BookedApi, short: set[str]) -> list[str]:
    """Outcomes of the wrong kind: a rejected number not dead-lettered ``rejected`` only, a
    good one dead-lettered at all (Redis faults are no fault of the number's), a short one not
    recorded short, a record naming neither a short number nor one another record names (a
    duplicate of a number recorded short is sent again and may sink its batch-mates' count;
    nothing else may)."""
    found = [
        f"rejected {n} dead-lettered {sorted(books.dead_reasons.get(n, ()))}"
        for n in plan.reject
        if books.dead_reasons.get(n) != {"rejected"}
    ]
    found += [
        f"good {n} dead-lettered {sorted(books.dead_reasons[n])}"
        f" ({'confirmed' if n in api.confirmed else 'never confirmed'} at the API)"
        for n in plan.ok + plan.short
        if n in books.dead_reasons
    ]
    found += [f"short {n} not recorded short" for n in plan.short if n not in short]
    for i, (batch_id, ids) in enumerate(books.records):
        others = {n for j, (_, more) in enumerate(books.records) if j != i for n in more}
        if not (set(plan.short) | others).intersection(ids):
            found.append(f"batch {batch_id} recorded short without a short number: {ids[:3]}")
    return found
