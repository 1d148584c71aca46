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

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Batch, Entry
from worker.errors import describe
from worker.logs import get_logger
from worker.pipeline.resend import Answer, Resender, Resent, Send, Waiter
from worker.pipeline.verify import Check, Findings, Query, Verifier, plan
from worker.store.limiter import RateLimiter
from worker.store.listing import MARGIN_MS, SharedListing, Snapshot

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


@dataclass(frozen=True, slots=True)
class Plan:
    """The queries of a round; ``cost`` their pages, None when the listing's size is unknown."""

    queries: list[Query]
    cost: int | None

    @property
    def is_scan(self) -> bool:
        """True when the plan reads the unfiltered listing."""
        return len(self.queries) == 1 and self.queries[0].is_scan


@dataclass(slots=True)
class _Estimate:
    total: int
    at: float
    confirmed_at: int


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
        self._shared = shared
        self._limiter = limiter
        self._config = config
        self._clock = clock
        self._waiting: list[Waiter] = []
        self._gathered = 0
        self._wake = anyio.Event()
        self._stopping: anyio.Event | None = None
        self._confirmed = 0
        self._estimate: _Estimate | None = None
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
        self._confirmed += count

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

    def _groups(self, waiters: list[Waiter] | None = None) -> dict[str, list[Entry]]:
        # Numbers of ``waiters`` (every one gathered); a number may be in two batches.
        merged: dict[str, list[Entry]] = {}
        for waiter in self._waiting if waiters is None else waiters:
            for number, entries in waiter.groups.items():
                merged.setdefault(number, []).extend(entries)
        return merged

    def listing_pages(self) -> int | None:
        """Pages the whole listing is estimated to take; None when not known."""
        e = self._estimate
        if e is None or self._clock.monotonic() - e.at > self._config.max_wait_s:
            return None
        left = max(0, e.total - (self._confirmed - e.confirmed_at))
        return max(1, -(-left // self._verifier.page_size))

    def plan(self, waiters: list[Waiter] | None = None) -> Plan:
        """The cheaper way to check ``waiters`` (every one gathered by default; see the
        module docstring). Only a one-page reading proves a number is not listed, so
        the whole listing is worth reading only when it fits on one page; numbers with
        neither task nor domain cannot be proven until it does."""
        groups = self._groups(waiters)
        filtered = plan(groups)
        pages = self.listing_pages()
        scan = Plan([Query(tuple(groups))], pages)
        taskless = any(q.is_scan for q in filtered)
        if pages is None and (taskless or len(filtered) > 1):
            return scan  # learn the size first: one page may be everything
        if pages == 1:
            return scan
        if taskless:
            # What can be proven is, by task and domain; the rest only found listed.
            return Plan(filtered, len(filtered) + (pages or 0))
        return Plan(filtered, len(filtered))

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
        queries = _unread(chosen, fleet)
        if queries and not must and chosen.cost is not None and chosen.cost > 1:
            return  # the fleet told the listing's size: not cheap yet, go on gathering
        if chosen.cost is None and queries:
            # The listing's size is not known: its first page tells it, and is the whole
            # proof when the listing fits on it.
            found = await self._read(queries, 1, fleet)
            if found.error is not None or _covers(found, chosen.queries):
                self._serve(found, waiters)
                return
            if not must:
                return  # go on gathering, now knowing what the listing costs
            chosen = self.plan(waiters)
            queries = _unread(chosen, fleet)
        budget = self._config.max_pages
        if len(queries) > budget and not chosen.is_scan:
            # More tasks than a round may read: the oldest shortfalls now, the rest next.
            waiters = _oldest_within(waiters, fleet, budget)
            queries = _unread(self.plan(waiters), fleet)
        self._serve(await self._read(queries, budget, fleet), waiters)

    async def _read(
        self, queries: list[Query], pages: int, fleet: dict[str, tuple[Query, Snapshot]]
    ) -> Findings:
        found = await self._verifier.read(queries, self._limiter, pages)
        self._learn(found)
        for query, snapshot in fleet.values():
            found.add(query, snapshot)
        await self._share(found)
        return found

    async def _from_fleet(self, waiters: list[Waiter]) -> dict[str, tuple[Query, Snapshot]]:
        """The planned queries another replica (or this one) read whole after every answer
        they are about; the shared total, when fresher, becomes the estimate."""
        if self._shared is None:
            return {}
        queries = {q.field: q for q in plan(self._groups(waiters))}
        queries["*"] = Query(tuple(self._groups(waiters)))
        # Taken before Redis's clock is read, so each answer's time on it comes out late,
        # never early: a reading counts only if it surely came after the answer.
        mono = self._clock.monotonic()
        try:
            now_ms = await self._shared.now_ms()
            snapshots, total = await self._shared.read(queries)
        except Exception as exc:  # sharing only saves polls
            # A round reads for itself without it; whatever failed must not stop the hub
            # (redis-py can leak non-Redis errors from a connection a node closed).
            log.warning("verify.share_failed", step="read", error=describe(exc))
            return {}
        if total is not None:
            self._adopt(total, mono - (now_ms - total[0]) / 1000.0)
        answered = self._answered_ms(waiters, now_ms, mono)
        return {
            field: (queries[field], snap)
            for field, snap in snapshots.items()
            if all(snap.sent_ms >= answered[n] + MARGIN_MS for n in queries[field].numbers)
        }

    def _answered_ms(self, waiters: list[Waiter], now_ms: int, mono: float) -> dict[str, int]:
        """Each gathered number's answer time on Redis's clock (at the latest: when its
        batch came here)."""
        return {
            number: now_ms - int((mono - w.since) * 1000.0) for w in waiters for number in w.groups
        }

    def _adopt(self, total: tuple[int, int], at: float) -> None:
        e = self._estimate
        if e is None or at > e.at:
            self._estimate = _Estimate(total[1], at, self._confirmed)

    async def _share(self, found: Findings) -> None:
        if self._shared is None or not (found.snapshots or found.total is not None):
            return
        total = None if found.total is None else (found.total_ms, found.total)
        try:
            await self._shared.write(found.snapshots, total)
        except Exception as exc:  # as in _from_fleet: the next round reads for itself
            log.warning("verify.share_failed", step="write", error=describe(exc))

    def _learn(self, found: Findings) -> None:
        if found.total is not None:
            self._estimate = _Estimate(found.total, self._clock.monotonic(), self._confirmed)
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


def _unread(chosen: Plan, fleet: dict[str, tuple[Query, Snapshot]]) -> list[Query]:
    """The queries of ``chosen`` that no fleet reading answers already."""
    return [q for q in chosen.queries if q.field not in fleet]


def _oldest_within(
    waiters: list[Waiter], fleet: dict[str, tuple[Query, Snapshot]], budget: int
) -> list[Waiter]:
    """The oldest ``waiters`` whose filtered queries, together, fit in ``budget`` pages."""
    chosen: list[Waiter] = []
    fields: set[str] = set()
    for waiter in waiters:
        need = {q.field for q in plan(waiter.groups)} - fleet.keys()
        if chosen and len(fields | need) > budget:
            break
        chosen.append(waiter)
        fields |= need
    return chosen


def _covers(found: Findings, queries: Sequence[Query]) -> bool:
    """True when every number of ``queries`` was placed (found listed or proven not)."""
    return all(n in found.listed or n in found.proven for q in queries for n in q.numbers)
