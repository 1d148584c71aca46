"""Verified reconciliation: ask ``PollTaskResult`` which numbers of a short batch are unconfirmed.

A shortfall says how many numbers were not confirmed, not which. ``PollTaskResult`` lists the
finished tasks not yet acknowledged, so once a batch's answers are in, each number is

- **listed**: still unacknowledged, so it was not confirmed (the processor sends it again);
- **not listed**: confirmed, by this batch's requests or elsewhere, or unknown to the API;
- **unknown**: the query that would list it could not be read to its end within the budget.

Numbers are grouped by the ``task_no`` their entries carry (one ``TaskNo``-filtered query per
task), then by ``domain`` (one ``DomainName``-filtered query each), and the rest share one
unfiltered scan. Every query of one shortfall shares ``verify_max_pages`` pages; each page
first takes a slot of the account's shared rate limiter, like a send.

A query proves a number is not listed only when it was read to its last page and the listing
did not change while it was read (the same ``TotalItemNum`` on every page): acknowledging
shifts later results to earlier pages, so a number could slip past a reader between pages.
When the total changed the query is read again from page 1, as long as pages are left.
A query stops early once every number it looks for was found listed.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from dataclasses import dataclass, field

import anyio

from worker.api.client import PollClient, PollPage
from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Batch, Entry
from worker.errors import ApiError, describe
from worker.logs import get_logger
from worker.retry import ApiRetry, RetryPolicy
from worker.store.connection import REDIS_ERRORS
from worker.store.limiter import RateLimiter

log = get_logger("verify")


@dataclass(frozen=True, slots=True)
class Query:
    """One ``PollTaskResult`` listing (filtered by ``task_no`` or ``domain``, or neither) and
    the numbers it should list if they are still unacknowledged."""

    numbers: tuple[str, ...]
    task_no: str | None = None
    domain: str | None = None


@dataclass(slots=True)
class Check:
    """What verification learnt about a batch's numbers (each list in batch order)."""

    listed: list[str] = field(default_factory=list)
    not_listed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    pages: int = 0
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
            "error": self.error,
        }


def _first(entries: list[Entry], name: str) -> str | None:
    return next((v for e in entries if (v := getattr(e, name))), None)


def plan(batch: Batch) -> list[Query]:
    """The queries that cover ``batch``: per task, per domain, then one scan for the rest."""
    by_task: dict[str, list[str]] = {}
    by_domain: dict[str, list[str]] = {}
    rest: list[str] = []
    for number, entries in batch.groups.items():
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
    """Pages left for one shortfall."""

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
    """Checks short batches against ``PollTaskResult``; one instance per account.

    ``max_pages`` bounds the pages read per shortfall, ``page_size`` is each page's
    ``PageSize``; a retryable error is retried per page like a send, up to the policy's
    ``max_attempts``, a throttling answer reported to the limiter.
    """

    def __init__(
        self,
        poller: PollClient,
        *,
        max_pages: int,
        page_size: int,
        policy: RetryPolicy,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        slots: anyio.Semaphore | None = None,
    ) -> None:
        self._poller = poller
        # The lane's send slots: a page in flight counts like a send, a back-off does not.
        self._slots = slots
        self._max_pages = max_pages
        self._page_size = page_size
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()

    async def check(self, batch: Batch, limiter: RateLimiter) -> Check:
        """Which of ``batch``'s numbers are still listed; never raises an API or Redis error
        (a failed check has ``error`` set and every number unknown)."""
        budget = _Budget(self._max_pages)
        listed: set[str] = set()
        proven: set[str] = set()
        try:
            for query in plan(batch):
                found, complete = await self._read(query, budget, limiter)
                listed |= found
                if complete:
                    proven.update(n for n in query.numbers if n not in found)
        except ApiError as exc:
            return Check(unknown=batch.numbers, pages=budget.used, error=exc.summary())
        except REDIS_ERRORS as exc:
            error = describe(exc)
            return Check(unknown=batch.numbers, pages=budget.used, error=error)
        check = Check(pages=budget.used)
        for number in batch.numbers:
            if number in listed:
                check.listed.append(number)
            elif number in proven:
                check.not_listed.append(number)
            else:
                check.unknown.append(number)
        return check

    async def _read(
        self, query: Query, budget: _Budget, limiter: RateLimiter
    ) -> tuple[set[str], bool]:
        """The query's numbers found listed, and whether the listing was read to its end."""
        wanted = set(query.numbers)
        found: set[str] = set()
        while True:
            total: int | None = None
            for page_num in itertools.count(1):
                if not budget.take():
                    return found, False
                page = await self._page(query, page_num, limiter)
                found |= wanted.intersection(item.task_detail_no for item in page.items)
                if found == wanted:
                    return found, True
                if total is not None and page.total_items != total:
                    break  # the listing moved under us: read it again from page 1
                total = page.total_items
                if page_num >= page.total_pages and not page.next_page:
                    return found, True

    async def _page(self, query: Query, page_num: int, limiter: RateLimiter) -> PollPage:
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
                    await limiter.acquire(probe=False)  # it reports no outcome
                    return await self._poller.poll_task_result(
                        page_num, self._page_size, task_no=query.task_no, domain_name=query.domain
                    )
            except ApiError as exc:
                if not await retry.failed(exc):
                    raise
                await self._clock.sleep(retry.back_off(exc))
