"""Coalesced verification: the shortfalls of many batches checked by the same few polls.

Every ``PollTaskResult`` page spends a request of the account's quota, as an
acknowledgement does, so checking each short batch on its own would cost about a request per
short batch. The :class:`VerifyHub` of an account gathers the short batches of every sender
of this process and checks them together, once every one of their answers is in:

- **Two ways to read.** Filtered queries (one per ``task_no``, then per ``domain``, see
  :func:`~worker.pipeline.verify.plan`) cost about one page each; the unfiltered listing
  costs ``ceil(TotalItemNum / poll_page_size)`` pages and covers every number at once.
  Numbers that carry neither a task nor a domain can only be found in the listing.
- **The rule: the cheaper of the two,** by pages. The listing's size is estimated from the
  last ``TotalItemNum`` read, minus the numbers this process confirmed since (the listing
  only shrinks as they are confirmed); an estimate older than ``verify_max_wait_ms`` is not
  trusted. With no estimate and more than one filtered query, one page of the
  listing is read to learn its size (and, when it fits on that page, it is the whole proof).
- **When to ask.** A round waits ``verify_linger_ms`` from its first shortfall to gather
  more, and then goes as soon as one page checks everything gathered. While it would cost
  more it keeps gathering, because a backlog being drained shrinks the listing, and the
  shortfalls that arrive meanwhile ride along, until one of the bounds: the oldest shortfall
  has waited ``verify_max_wait_ms``, ``verify_max_numbers`` numbers are gathered, or the
  worker is draining. Then the cheaper plan is read, within ``verify_max_pages`` pages.

**Re-sends are coalesced too.** The numbers a round finds still listed are sent again by the
round itself, the listed numbers of several batches packed into requests of up to
``batch_size`` numbers (a batch's numbers never split between two), so a storm of dropped
confirmations costs a request per ``batch_size`` numbers found, not one per short batch. A
request that confirmed all it carried settles its batches' numbers; a short one leaves them
to the next round's check, where a number no longer listed was confirmed by the re-send.

**And across replicas.** A query read whole on one page is shared through Redis
(:mod:`worker.store.listing`); a round first looks there, and a query another replica read
after every answer it is about needs no poll. The listing's last size is shared the same way.

A waiting batch holds no sender: its task waits here, its entries are parked in the lane's
holdings (refreshed against claims, outside the prefetch bound). A poll the account may not
make (a permanent or fatal answer) turns verification off for ``verify_max_wait_ms``; the
shortfalls meanwhile are recorded unverified, without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Batch
from worker.logs import get_logger
from worker.pipeline.costrule import (
    ListingEstimate,
    Plan,
    choose,
    covers,
    groups_of,
    oldest_within,
)
from worker.pipeline.fleet import FleetListing, Readings
from worker.pipeline.resend import Answer, Resender, Resent, Send, Waiter
from worker.pipeline.verify import Check, Findings, Query, Verifier, plan
from worker.store.limiter import RateLimiter
from worker.store.listing import SharedListing

log = get_logger("verify")

RECHECK_FLOOR_S = 0.1
"""While a round waits for a cheaper listing, it looks again this often at the least (with
``verify_linger_ms`` 0 it would otherwise spin)."""


@dataclass(frozen=True, slots=True)
class HubConfig:
    """``linger_s``: least wait to gather; ``max_wait_s``: most any shortfall waits;
    ``max_numbers``: most numbers gathered before a round goes; ``max_pages``: most pages
    one round reads."""

    linger_s: float = 0.5
    max_wait_s: float = 10.0
    max_numbers: int = 20_000
    max_pages: int = 20
    batch_size: int = 100


class VerifyHub:
    """Checks the shortfalls of one account's batches together (see the module docstring).

    :meth:`check` is what a short batch awaits; :meth:`run`, a long-lived task of the worker,
    does the rounds; :meth:`note_confirmed` keeps the listing's estimate current.
    """

    def __init__(
        self,
        verifier: Verifier,
        limiter: RateLimiter,
        config: HubConfig,
        clock: Clock = SYSTEM_CLOCK,
        shared: SharedListing | None = None,
    ) -> None:
        self._verifier = verifier
        self._fleet = None if shared is None else FleetListing(shared, clock)
        self._limiter = limiter
        self._config = config
        self._clock = clock
        self._waiting: list[Waiter] = []
        self._gathered = 0
        self._wake = anyio.Event()
        self._stopping: anyio.Event | None = None
        self._estimate = ListingEstimate(verifier.page_size, config.max_wait_s)
        self._off_until = 0.0
        self._off_error = ""
        self._tg: TaskGroup | None = None
        self._resender = Resender(clock, config.batch_size, self.note_confirmed)

    @property
    def waiting(self) -> int:
        """Numbers gathered for the next round."""
        return self._gathered

    def note_confirmed(self, count: int) -> None:
        """This process's requests confirmed ``count`` more numbers of the account."""
        self._estimate.confirmed(count)

    async def check(self, batch: Batch, send: Send | None = None) -> Answer:
        """Which of ``batch``'s numbers are still listed, learnt in the next round; with
        ``send``, the round also sends those again (with other batches' listed numbers)."""
        if self._clock.monotonic() < self._off_until:
            return Answer(Check(unknown=batch.numbers, error=self._off_error))
        now = self._clock.monotonic()
        waiter = Waiter(batch.batch_id, dict(batch.groups), now, batch.account, send)
        self._waiting.append(waiter)
        self._gathered += len(waiter.groups)
        self._wake.set()
        await waiter.done.wait()
        assert waiter.answer is not None
        return waiter.answer

    async def run(self, stopping: anyio.Event | None = None) -> None:
        """Do the rounds, for ever; ``stopping`` set makes every round go at once."""
        self._stopping = stopping
        # Re-sends run in tasks of their own: a round's re-sends (retried for as long as
        # retry_budget_s) must not hold up the next round's checks.
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while True:
                if not self._waiting:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                await self._round(must=await self._gather())

    # --- when --------------------------------------------------------------------------

    def _must_go(self, now: float) -> bool:
        c = self._config
        return (
            (self._stopping is not None and self._stopping.is_set())
            or self._gathered >= c.max_numbers
            or now - self._waiting[0].since >= c.max_wait_s
        )

    async def _gather(self) -> bool:
        """Wait until a round should go: True when a bound says it must, False when it is
        cheap (one page) or the listing's size must be learnt first."""
        c = self._config
        while True:
            now = self._clock.monotonic()
            if self._must_go(now):
                return True
            left = self._waiting[0].since + c.linger_s - now
            if left <= 0:
                cost = self.plan().cost
                if cost is None or cost <= 1:
                    return False
                recheck = max(c.linger_s, RECHECK_FLOOR_S)
                left = min(recheck, self._waiting[0].since + c.max_wait_s - now)
            await self._sleep_or_wake(left)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                await self._clock.sleep(seconds)
                tg.cancel_scope.cancel()

            async def woken(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(timer)
            tg.start_soon(woken, self._wake)
            if self._stopping is not None:
                tg.start_soon(woken, self._stopping)

    # --- what --------------------------------------------------------------------------

    def listing_pages(self) -> int | None:
        """Pages the whole listing is estimated to take; None when not known."""
        return self._estimate.pages(self._clock.monotonic())

    def plan(self, waiters: list[Waiter] | None = None) -> Plan:
        """The cheaper way to check ``waiters`` (every one gathered by default), by the
        rule of :mod:`worker.pipeline.costrule`."""
        return choose(
            groups_of(self._waiting if waiters is None else waiters), self.listing_pages()
        )

    # --- the round ---------------------------------------------------------------------

    async def _round(self, must: bool) -> None:
        # Only the shortfalls gathered before a read began are served by it: an answer that
        # came in while the listing was being read may postdate the page that should list it.
        waiters = list(self._waiting)
        if self._clock.monotonic() < self._off_until:
            self._serve(Findings(error=self._off_error), waiters)
            return
        fleet = await self._from_fleet(waiters)
        chosen = self.plan(waiters)
        queries = chosen.unread(fleet)
        if queries and not must and chosen.cost is not None and chosen.cost > 1:
            return  # the fleet told the listing's size: not cheap yet, go on gathering
        if chosen.cost is None and queries:
            # The listing's size is not known: its first page tells it, and is the whole
            # proof when the listing fits on it.
            found = await self._read(queries, 1, fleet)
            if found.error is not None or covers(found, chosen.queries):
                self._serve(found, waiters)
                return
            if not must:
                return  # go on gathering, now knowing what the listing costs
            chosen = self.plan(waiters)
            queries = chosen.unread(fleet)
        budget = self._config.max_pages
        if len(queries) > budget and not chosen.is_scan:
            # More tasks than a round may read: the oldest shortfalls now, the rest next.
            waiters = oldest_within(waiters, fleet, budget)
            queries = self.plan(waiters).unread(fleet)
        self._serve(await self._read(queries, budget, fleet), waiters)

    async def _read(self, queries: list[Query], pages: int, fleet: Readings) -> Findings:
        found = await self._verifier.read(queries, self._limiter, pages)
        self._learn(found)
        for query, snapshot in fleet.values():
            found.add(query, snapshot)
        if self._fleet is not None:
            await self._fleet.share(found)
        return found

    async def _from_fleet(self, waiters: list[Waiter]) -> Readings:
        """The planned queries another replica (or this one) read whole after every answer
        they are about; the shared size, when fresher, becomes the estimate."""
        if self._fleet is None:
            return {}
        groups = groups_of(waiters)
        queries = {q.field: q for q in plan(groups)}
        queries["*"] = Query(tuple(groups))
        readings, size = await self._fleet.lookup(waiters, queries)
        if size is not None:
            self._estimate.read(*size, unless_older=True)
        return readings

    def _learn(self, found: Findings) -> None:
        if found.total is not None:
            self._estimate.read(found.total, self._clock.monotonic())
        if found.permanent:
            self._off_until = self._clock.monotonic() + self._config.max_wait_s
            self._off_error = f"verification unavailable: {found.error}"
            log.warning("reconcile.verify_off", error=found.error, off_s=self._config.max_wait_s)

    def _serve(self, found: Findings, served: list[Waiter]) -> None:
        if found.error is None and found.unread and served:
            # Their queries got no page this round: they wait for the next, not unplaced;
            # but the oldest is served whatever it got, so every round makes progress.
            oldest, rest = served[0], served[1:]
            served = [oldest, *(w for w in rest if found.unread.isdisjoint(w.groups))]
        done = {id(w) for w in served}
        self._waiting = [w for w in self._waiting if id(w) not in done]
        self._gathered = sum(len(w.groups) for w in self._waiting)
        resend = []
        for waiter in served:
            waiter.answer = check = Answer(found.check(waiter.groups, len(served)))
            if waiter.send is not None and check.check.listed and not check.check.failed:
                resend.append(waiter)
            else:
                waiter.done.set()
        if resend:
            assert self._tg is not None
            self._tg.start_soon(self._resend, resend)

    async def _resend(self, waiters: list[Waiter]) -> None:
        try:
            await self._resender.send(waiters)
        finally:
            for waiter in waiters:
                assert waiter.answer is not None
                if waiter.answer.resent is Resent.NOT_SENT:
                    # Cut short (cancelled, or an error no one foresaw): whether its request
                    # went out is unknown, so its numbers are unplaced, never dead-lettered.
                    waiter.answer.resent = Resent.LOST
                waiter.done.set()
