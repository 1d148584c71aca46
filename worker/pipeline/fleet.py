"""A verification round and the fleet: what other replicas already read of the listing.

A one-page reading proves something about every answer that came before it was asked for,
whichever replica made it, so a round first looks in Redis (:mod:`worker.store.listing`) and
shares what it read. Sharing only saves polls: whatever fails here, the round reads for
itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.clock import Clock
from worker.errors import describe
from worker.logs import get_logger
from worker.pipeline.resend import Waiter
from worker.pipeline.verify import Findings, Query
from worker.store.listing import MARGIN_MS, SharedListing, Snapshot

log = get_logger("verify")

Readings = dict[str, tuple[Query, Snapshot]]
"""Queries answered by a fleet reading, by :attr:`Query.field`: the query and the reading."""


class FleetListing:
    """One account's shared readings, seen from one hub."""

    def __init__(self, shared: SharedListing, clock: Clock) -> None:
        self._shared = shared
        self._clock = clock

    async def lookup(
        self, waiters: Sequence[Waiter], queries: dict[str, Query]
    ) -> tuple[Readings, tuple[int, float] | None]:
        """The ``queries`` (by field) read whole after every answer they are about, and the
        listing's last shared size as ``(total, at)`` on this process's monotonic clock."""
        # Taken before Redis's clock is read, so each answer's time on it comes out late,
        # never early: a reading counts only if it surely came after the answer.
        mono = self._clock.monotonic()
        try:
            now_ms = await self._shared.now_ms()
            snapshots, total = await self._shared.read(queries)
        except Exception as exc:  # redis-py can leak non-Redis errors from a closed node
            log.warning("verify.share_failed", step="read", error=describe(exc))
            return {}, None
        answered = {
            number: now_ms - int((mono - w.since) * 1000.0) for w in waiters for number in w.groups
        }
        readings = {
            field: (queries[field], snap)
            for field, snap in snapshots.items()
            if all(snap.sent_ms >= answered[n] + MARGIN_MS for n in queries[field].numbers)
        }
        size = None if total is None else (total[1], mono - (now_ms - total[0]) / 1000.0)
        return readings, size

    async def share(self, found: Findings) -> None:
        """Share the one-page readings and the listing's size that a round read."""
        if not (found.snapshots or found.total is not None):
            return
        total = None if found.total is None else (found.total_ms, found.total)
        try:
            await self._shared.write(found.snapshots, total)
        except Exception as exc:  # as in lookup: the next round reads for itself
            log.warning("verify.share_failed", step="write", error=describe(exc))
