"""Reading ``PollTaskResult``: which of a set of numbers are still unconfirmed.

A shortfall says how many numbers were not confirmed, not which. ``PollTaskResult`` lists the
finished tasks not yet acknowledged, so once a request's answer is in, each of its numbers is

- **listed**: still unacknowledged, so it was not confirmed (it is sent again);
- **not listed**: confirmed, by this request or elsewhere, or unknown to the API;
- **unknown**: the query that would list it could not be read to its end within the budget.

:func:`plan` groups numbers by the ``task_no`` their entries carry (one ``TaskNo``-filtered
query per task), then by ``domain`` (one ``DomainName``-filtered query each); the rest need
the unfiltered listing, which also covers every other number. :mod:`worker.pipeline.coalesce`
decides which of the two to read, for the shortfalls of many batches at once. Every page
first takes a slot of the account's shared rate limiter, like a send, and is counted as a
``poll`` request.

A query proves a number is not listed only when it fits on one page: a page is a snapshot
of the query's listing, but pages read one after another are not (acknowledging shifts
later results to earlier pages, and new results join, so a listed number could be on
neither of two pages read a moment apart). So only first pages are read: a longer query's
first page finds what is listed on it (its oldest results) and proves nothing else.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from worker.api.client import PollClient, PollPage
from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Entry
from worker.errors import ApiError, describe
from worker.logs import get_logger
from worker.retry import ApiRetry, RetryPolicy
from worker.store.connection import REDIS_ERRORS
from worker.store.limiter import RateLimiter
from worker.store.listing import Snapshot

log = get_logger("verify")


@dataclass(frozen=True, slots=True)
class Query:
    """One ``PollTaskResult`` listing (filtered by ``task_no`` or ``domain``, or neither:
    the whole listing) and the numbers it should list if they are still unacknowledged."""

    numbers: tuple[str, ...]
    task_no: str | None = None
    domain: str | None = None

    @property
    def is_scan(self) -> bool:
        """True for the unfiltered listing."""
        return self.task_no is None and self.domain is None

    @property
    def field(self) -> str:
        """The query's name in the fleet's shared listing (:mod:`worker.store.listing`)."""
        if self.task_no is not None:
            return f"t:{self.task_no}"
        return "*" if self.domain is None else f"d:{self.domain}"


@dataclass(slots=True)
class Check:
    """What verification learnt about a batch's numbers (each list in batch order).
    ``pages``: poll requests of the round that checked them, ``batches``: how many short
    batches that round checked together."""

    listed: list[str] = field(default_factory=list)
    not_listed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    pages: int = 0
    batches: int = 1
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Nothing was learnt: an API error, or no query got anywhere within the budget."""
        return self.error is not None or not (self.listed or self.not_listed)

    def counts(self) -> dict[str, int | str | None]:
        """The fields ``reconcile.verified`` logs."""
        return {
            "listed": len(self.listed),
            "not_listed": len(self.not_listed),
            "unknown": len(self.unknown),
            "pages": self.pages,
            "batches": self.batches,
            "error": self.error,
        }


@dataclass(slots=True)
class Findings:
    """What one round of queries read: numbers ``listed``, numbers ``proven`` not listed
    (their query was read whole), the ``pages`` read, the ``error`` that ended the round
    early, ``total``, the whole listing's ``TotalItemNum`` when the round read it (with
    ``total_ms``, Redis's clock then), ``snapshots``: each query read whole on one page, to
    share with the fleet, and ``unread``: numbers of queries the pages did not reach."""

    listed: set[str] = field(default_factory=set)
    proven: set[str] = field(default_factory=set)
    pages: int = 0
    error: str | None = None
    permanent: bool = False
    total: int | None = None
    total_ms: int = 0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    unread: set[str] = field(default_factory=set)

    def add(self, query: Query, snapshot: Snapshot) -> None:
        """Place ``query``'s numbers by a whole reading of it (here or by another replica)."""
        listed = snapshot.listed.intersection(query.numbers)
        self.listed |= listed
        self.proven.update(n for n in query.numbers if n not in listed)

    def check(self, numbers: Iterable[str], batches: int) -> Check:
        """The check of ``numbers`` (in their order) by what this round read."""
        c = Check(pages=self.pages, batches=batches, error=self.error)
        for number in numbers:
            if number in self.listed:
                c.listed.append(number)
            elif number in self.proven and self.error is None:
                c.not_listed.append(number)
            else:
                c.unknown.append(number)
        return c


def _first(entries: Sequence[Entry], name: str) -> str | None:
    return next((v for e in entries if (v := getattr(e, name))), None)


def plan(groups: Mapping[str, Sequence[Entry]]) -> list[Query]:
    """The filtered queries that cover ``groups`` (number -> its entries): per task, per
    domain, then one unfiltered scan for the numbers that carry neither."""
    by_task: dict[str, list[str]] = {}
    by_domain: dict[str, list[str]] = {}
    rest: list[str] = []
    for number, entries in groups.items():
        if task_no := _first(entries, "task_no"):
            by_task.setdefault(task_no, []).append(number)
        elif domain := _first(entries, "domain"):
            by_domain.setdefault(domain, []).append(number)
        else:
            rest.append(number)
    queries = [Query(tuple(n), task_no=t) for t, n in by_task.items()]
    queries += [Query(tuple(n), domain=d) for d, n in by_domain.items()]
    if rest:
        queries.append(Query(tuple(rest)))
    return queries


class _Budget:
    """Pages left for one round."""

    def __init__(self, pages: int) -> None:
        self.left = pages
        self.used = 0

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        self.used += 1
        return True


class Verifier:
    """Reads ``PollTaskResult`` for one account.

    ``page_size`` is each page's ``PageSize``; a retryable error is retried per page like a
    send, up to the policy's ``max_attempts``, a throttling answer reported to the limiter.
    ``counted`` is called once per request sent (the ``poll`` request counter).
    """

    def __init__(
        self,
        poller: PollClient,
        *,
        page_size: int,
        policy: RetryPolicy,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        slots: anyio.Semaphore | None = None,
        counted: Callable[[], None] = lambda: None,
    ) -> None:
        self._poller = poller
        # The lane's send slots: a page in flight counts like a send, a back-off does not.
        self._slots = slots
        self.page_size = page_size
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._counted = counted

    async def read(self, queries: Sequence[Query], limiter: RateLimiter, pages: int) -> Findings:
        """Read the first page of each of ``queries``, in order, within ``pages`` pages;
        numbers of a query left without a page are ``unread``. Never raises an API or Redis
        error: it ends the round with ``error`` set, and nothing counts as proof then.

        Only first pages: one proves what it does not list when the query fits on it, and
        shows the oldest results when it does not; a later page can never prove anything
        (see the module docstring), so on a long listing it is a request spent to find a
        number that the upstream poller will enqueue again anyway while it stays listed."""
        budget = _Budget(pages)
        found = Findings()
        try:
            for query in queries:
                await self._first(query, budget, limiter, found)
        except ApiError as exc:
            found.error, found.permanent = exc.summary(), not exc.retryable
        except REDIS_ERRORS as exc:
            found.error = describe(exc)
        found.pages = budget.used
        return found

    async def _first(
        self, query: Query, budget: _Budget, limiter: RateLimiter, found: Findings
    ) -> None:
        """Read the query's first page: a query that fits on it is a snapshot of it, so what
        it does not list is not listed."""
        if not budget.take():
            found.unread.update(query.numbers)
            return
        page, granted_ms = await self._page(query, 1, limiter)
        if query.is_scan:
            found.total, found.total_ms = page.total_items, granted_ms
        on_page = frozenset(item.task_detail_no for item in page.items)
        listed = on_page.intersection(query.numbers)
        found.listed |= listed
        if page.total_pages <= 1 and not page.next_page:
            found.snapshots[query.field] = Snapshot(granted_ms, on_page)
            found.proven.update(n for n in query.numbers if n not in listed)

    async def _page(
        self, query: Query, page_num: int, limiter: RateLimiter
    ) -> tuple[PollPage, int]:
        """The page, and Redis's clock (ms) when its rate-limit slot was granted."""
        retry = ApiRetry(
            self._policy,
            self._rng,
            log=log,
            event="reconcile.poll_retry",
            throttled=limiter.throttled,
        )
        while True:
            try:
                async with self._slots or contextlib.nullcontext():
                    slot = await limiter.acquire(probe=False)  # it reports no outcome
                    self._counted()
                    page = await self._poller.poll_task_result(
                        page_num, self.page_size, task_no=query.task_no, domain_name=query.domain
                    )
                    return page, slot.granted_us // 1000
            except ApiError as exc:
                if not await retry.failed(exc):
                    raise
                await self._clock.sleep(retry.back_off(exc))
