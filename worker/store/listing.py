"""What the fleet read of an account's ``PollTaskResult`` listing, shared through Redis.

A verification round proves a number is not listed by reading the listing (or a task's or a
domain's part of it) whole, after the request that should have confirmed the number was
answered. That proof serves every replica: a round that read a query on one page writes
what it found under ``<prefix>:listing[:<account>]:<query>`` (``*`` for the whole listing,
``t:<task_no>``, ``d:<domain>``), value = ``<sent_ms>|<numbers listed>``,
where ``sent_ms`` is Redis's clock when the page's rate-limit slot was granted, a moment
before the page was asked for. Another replica's round uses it instead of polling for numbers
whose answers came before ``sent_ms`` (on the same clock, less :data:`MARGIN_MS`). Query
``#total`` keeps the whole listing's last ``TotalItemNum`` (``<at_ms>|<total>``) so a replica
need not spend a page to learn it. Each key expires ``ttl_ms`` after it was written (a
snapshot only proves something about answers older than it), and only one-page reads are
shared, so the keys hold at most a page of numbers each, for the queries of the last
``ttl_ms``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.store.connection import RedisClient, redis_now_ms

MARGIN_MS = 50
"""A snapshot must have been taken this much after an answer to prove anything about it:
it covers converting this process's clock to Redis's (a round trip) with room to spare."""
TOTAL = "#total"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One query read whole: every number it listed, asked for after ``sent_ms``."""

    sent_ms: int
    listed: frozenset[str]


class SharedListing:
    """One account's shared listing hash (see the module docstring)."""

    def __init__(self, redis: RedisClient, key: str, ttl_ms: int) -> None:
        self._redis = redis
        self._key = key  # the keys are <key>:<query>
        self._ttl_ms = ttl_ms

    async def now_ms(self) -> int:
        """Redis's clock, in ms: the clock every ``sent_ms`` is on."""
        return await redis_now_ms(self._redis, self._key)

    async def read(
        self, fields: Iterable[str]
    ) -> tuple[dict[str, Snapshot], tuple[int, int] | None]:
        """The snapshots of ``fields`` that exist, and the last total as ``(at_ms, total)``."""
        wanted = [*dict.fromkeys(fields), TOTAL]
        reply: Any = self._redis.mget([f"{self._key}:{field}" for field in wanted])
        values: list[bytes | str | None] = await reply
        found: dict[str, Snapshot] = {}
        total = None
        for field, raw in zip(wanted, values, strict=True):
            if raw is None:
                continue
            head, _, body = (raw.decode() if isinstance(raw, bytes) else raw).partition("|")
            if not head.isdigit() or (field == TOTAL and not body.isdigit()):
                continue  # not ours to read (written by hand?): as good as absent
            if field == TOTAL:
                total = (int(head), int(body))
            else:
                found[field] = Snapshot(int(head), frozenset(filter(None, body.split(","))))
        return found, total

    async def write(self, snapshots: Mapping[str, Snapshot], total: tuple[int, int] | None) -> None:
        """Share what a round read, each query's reading for ``ttl_ms``."""
        mapping = {f: f"{s.sent_ms}|{','.join(sorted(s.listed))}" for f, s in snapshots.items()}
        if total is not None:
            mapping[TOTAL] = f"{total[0]}|{total[1]}"
        async with self._redis.pipeline(transaction=False) as pipe:
            for field, value in mapping.items():
                pipe.set(f"{self._key}:{field}", value, px=self._ttl_ms)
            await pipe.execute()
