"""The cost rule of a verification round: which ``PollTaskResult`` queries check what was
gathered with the fewest pages, and how long the account's listing is.

Only a one-page reading proves a number is not listed (see :mod:`worker.pipeline.verify`),
so the whole listing is worth reading only when it fits on one page; otherwise one filtered
query per task and per domain. Numbers with neither task nor domain cannot be proven until
the listing fits on a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.entries import Entry
from worker.pipeline.resend import Waiter
from worker.pipeline.verify import Findings, Query, plan

Fleet = Mapping[str, object]
"""Queries another replica already read, by :attr:`Query.field` (what they hold is the
hub's business; here only which ones need no page)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The queries of a round; ``cost`` their pages, None when the listing's size is unknown."""

    queries: list[Query]
    cost: int | None

    @property
    def is_scan(self) -> bool:
        """True when the plan reads the unfiltered listing."""
        return len(self.queries) == 1 and self.queries[0].is_scan

    def unread(self, fleet: Fleet) -> list[Query]:
        """The queries no fleet reading answers already."""
        return [q for q in self.queries if q.field not in fleet]


class ListingEstimate:
    """How long the account's listing is: the last ``TotalItemNum`` read, less the numbers
    this process confirmed since (confirming shrinks it); not trusted after ``max_age_s``."""

    def __init__(self, page_size: int, max_age_s: float) -> None:
        self._page_size = page_size
        self._max_age_s = max_age_s
        self._confirmed = 0
        self._reading: tuple[int, float, int] | None = None  # total, at (monotonic), confirmed

    def confirmed(self, count: int) -> None:
        """This process's requests confirmed ``count`` more numbers of the account."""
        self._confirmed += count

    def read(self, total: int, at: float, *, unless_older: bool = False) -> None:
        """The listing held ``total`` results at ``at`` (monotonic seconds); with
        ``unless_older``, kept only when fresher than the reading already held."""
        if unless_older and self._reading is not None and at <= self._reading[1]:
            return
        self._reading = (total, at, self._confirmed)

    def pages(self, now: float) -> int | None:
        """Pages the whole listing is estimated to take; None when not known."""
        if self._reading is None or now - self._reading[1] > self._max_age_s:
            return None
        total, _, confirmed_then = self._reading
        left = max(0, total - (self._confirmed - confirmed_then))
        return max(1, -(-left // self._page_size))


def groups_of(waiters: Iterable[Waiter]) -> dict[str, list[Entry]]:
    """The numbers of ``waiters`` and their entries (a number may be in two batches)."""
    merged: dict[str, list[Entry]] = {}
    for waiter in waiters:
        for number, entries in waiter.groups.items():
            merged.setdefault(number, []).extend(entries)
    return merged


def choose(groups: Mapping[str, Sequence[Entry]], pages: int | None) -> Plan:
    """The cheaper way to check ``groups`` with the listing ``pages`` long (None: unknown)."""
    filtered = plan(groups)
    scan = Plan([Query(tuple(groups))], pages)
    taskless = any(q.is_scan for q in filtered)
    if pages is None and (taskless or len(filtered) > 1):
        return scan  # learn the size first: one page may be everything
    if pages == 1:
        return scan
    if taskless:
        # What can be proven is, by task and domain; the rest is only looked for on the
        # listing's first page. Costed as the whole listing, so it waits for a bound.
        return Plan(filtered, len(filtered) + (pages or 0))
    return Plan(filtered, len(filtered))


def oldest_within(waiters: list[Waiter], fleet: Fleet, budget: int) -> list[Waiter]:
    """The oldest ``waiters`` whose filtered queries, together, fit in ``budget`` pages (the
    oldest always, so every round makes progress)."""
    chosen: list[Waiter] = []
    fields: set[str] = set()
    for waiter in waiters:
        need = {q.field for q in plan(waiter.groups)} - set(fleet)
        if chosen and len(fields | need) > budget:
            break
        chosen.append(waiter)
        fields |= need
    return chosen


def covers(found: Findings, queries: Sequence[Query]) -> bool:
    """True when every number of ``queries`` was placed (found listed or proven not)."""
    return all(n in found.listed or n in found.proven for q in queries for n in q.numbers)
