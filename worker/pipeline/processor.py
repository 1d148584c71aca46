"""One batch from reservation to settlement: dedupe → limiter → client → reconciler → settle.

Every batch ends in exactly one ``batch.settled`` event, however it was split or retried.
Outcomes per number: confirmed, duplicate, dead-lettered (``rejected``, ``retries_exhausted``,
``unconfirmed``), or recorded in ``<prefix>:reconcile``. A short batch is never re-sent
blind: with verification on it waits, in a task of its own, for the account's
:class:`~worker.pipeline.coalesce.VerifyHub` to learn which of its numbers are still listed,
and only those are sent again. Fatal answers
never settle anything: the :class:`~worker.pipeline.sendgate.SendGate` holds the batch until
sending works again. Neither does an endpoint that is away: the limiter pauses the account's
sending fleet-wide (:mod:`worker.store.limiter`), and a batch is dead-lettered
``retries_exhausted`` only after ``max_attempts`` and ``retry_budget_s`` of failing while the
API answers others.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from worker.api.client import Acknowledger, AckResult
from worker.clock import SYSTEM_CLOCK, Clock, iso_utc
from worker.entries import Batch, Entry, Holdings
from worker.errors import ApiError, PermanentApiError
from worker.logs import get_logger
from worker.pipeline.coalesce import VerifyHub
from worker.pipeline.reconciler import Resolution, assess, reconcile_record, verdict_fields
from worker.pipeline.report import BatchReport
from worker.pipeline.resend import Resent
from worker.pipeline.sender import Sender
from worker.pipeline.sendgate import SendGate
from worker.reasons import DeadReason
from worker.retry import RetryPolicy
from worker.store.connection import REDIS_ERRORS
from worker.store.dedupe import Dedupe, Reservation
from worker.store.limiter import RateLimiter
from worker.store.settle import Settlement, Settler, leases_of
from worker.store.source import entry_dead_letter
from worker.totals import Totals

log = get_logger("processor")

BUSY_RECHECK_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

Work = Callable[[Batch], Awaitable[None]]
Spawn = Callable[[Work, Batch], None]
"""``spawn(work, batch)``: run ``work(batch)`` as a task of the lane's own (the worker's
pipeline task group), so a sender is not held while it waits."""


@dataclass(slots=True)
class ProcessorDeps:
    """Everything a :class:`Processor` talks to, built by the runner."""

    dedupe: Dedupe
    limiter: RateLimiter
    client: Acknowledger
    settler: Settler
    gate: SendGate
    policy: RetryPolicy
    holdings: Holdings
    totals: Totals
    spawn: Spawn
    # At most `concurrency` requests in flight, rechecks of busy numbers included.
    send_slots: anyio.Semaphore
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random = field(default_factory=random.Random)
    # Learns which numbers short batches left unconfirmed; None: shortfalls go unverified.
    hub: VerifyHub | None = None


class Processor:
    """Takes batches to their outcome. One instance serves every sender task."""

    def __init__(self, deps: ProcessorDeps) -> None:
        self._d = deps
        self._sender = Sender(deps)

    async def process(self, batch: Batch) -> None:
        """Reserve, send and settle ``batch``; log one ``batch.settled``.

        A Redis failure is raised (the runner logs ``batch.abandoned``) after this process
        forgets the entries it was still responsible for: they stay pending and are claimed
        later. Entries handed to a recheck are not among them: the recheck still works on
        them, and the lease renewer must go on keeping them ours; nor are a short batch's,
        which its verification task still works on (both are in ``report.handed``).
        """
        d = self._d
        report = BatchReport(batch.batch_id, batch.size, d.clock.monotonic(), batch.account)
        try:
            await self._process(batch, report)
        except REDIS_ERRORS:
            handed = set(report.handed)
            mine = [e for n, group in batch.groups.items() if n not in handed for e in group]
            d.holdings.discard(mine)
            raise

    async def _process(self, batch: Batch, report: BatchReport) -> None:
        d = self._d
        statuses = await d.dedupe.reserve(batch.numbers, batch.digests(), batch.batch_id)
        by_status: dict[Reservation, list[str]] = {r: [] for r in Reservation}
        for number, status in zip(batch.numbers, statuses, strict=True):
            by_status[status].append(number)
        if by_status[Reservation.CONFIRMED]:
            await self._settle_duplicates(batch.subset(by_status[Reservation.CONFIRMED]), report)
        if by_status[Reservation.BUSY]:
            # Another request carries these numbers right now; decide once it has settled.
            report.handed += by_status[Reservation.BUSY]
            self._defer(batch, by_status[Reservation.BUSY], report)
        if by_status[Reservation.GO]:
            go = batch.subset(by_status[Reservation.GO])
            for entry in go.entries():
                entry.lease = batch.batch_id
            await self._deliver(go, report)
        self._part_done(report)

    def _part_done(self, report: BatchReport) -> None:
        """Log ``batch.settled`` once the last part of the batch is done."""
        d = self._d
        if report.part_done() and report.size:
            d.totals.batches += 1
            log.info("batch.settled", **report.fields(d.clock.monotonic()))

    def _defer(self, batch: Batch, numbers: list[str], report: BatchReport) -> None:
        """Recheck busy numbers later, as a batch of their own (``<batch_id>.r<n>``) that
        logs its own ``batch.settled``; all of a batch busy stays that batch."""
        busy = batch.subset(numbers)
        if busy is not batch:
            busy.batch_id = f"{batch.batch_id}.r{batch.rechecks + 1}"
        busy.rechecks = batch.rechecks + 1
        report.size -= busy.size
        self._d.spawn(self.recheck_busy, busy)

    async def recheck_busy(self, batch: Batch) -> None:
        """Process numbers that were busy, after a back-off that grows with each recheck.

        Bounded: a lease lasts at most ``claim_idle_ms``, after which the number is free.
        """
        delay = BUSY_RECHECK_S[min(batch.rechecks, len(BUSY_RECHECK_S)) - 1]
        await self._d.clock.sleep(delay)
        await self.process(batch)

    async def _deliver(self, batch: Batch, report: BatchReport) -> None:
        outcome = await self._send(batch, report)
        if isinstance(outcome, AckResult):
            await self._reconcile(batch, outcome, report)
        elif isinstance(outcome, PermanentApiError) and len(batch.groups) > 1:
            numbers = batch.numbers
            half = len(numbers) // 2
            log.info("batch.split", batch_id=batch.batch_id, size=len(numbers), code=outcome.code)
            await self._deliver(batch.subset(numbers[:half]), report)
            await self._deliver(batch.subset(numbers[half:]), report)
        else:
            await self._dead_letter(batch, _dead_reason(outcome), outcome, report)

    async def _send(self, batch: Batch, report: BatchReport) -> AckResult | ApiError:
        return await self._sender.send(batch, report)

    async def _reconcile(self, batch: Batch, first: AckResult, report: BatchReport) -> None:
        d = self._d
        submitted = len(batch.groups)
        verdict = assess(submitted, [first.result])
        if d.hub is not None:
            d.hub.note_confirmed(verdict.confirmed)
        if verdict.shortfall:
            log.warning("batch.shortfall", **verdict_fields(batch, verdict, report.request_ids))
            await self._short(Resolution.start(batch, verdict), report)
            return
        entry_ids = [e.entry_id for e in batch.entries()]
        settlement = Settlement(entry_ids, batch.digests(), release=leases_of(batch.entries()))
        if verdict.overcount:
            record = reconcile_record(batch, verdict, report.request_ids, self._now())
            settlement.reconcile.append(record)
            log.error("batch.overcount", **verdict_fields(batch, verdict, report.request_ids))

        def count() -> None:
            riders = batch.size - submitted
            report.duplicates += riders
            report.confirmed += verdict.confirmed
            d.totals.duplicates += riders
            d.totals.confirmed += verdict.confirmed
            d.totals.overcount += verdict.overcount

        await self._settle(settlement, batch.entries(), count)

    async def _short(self, case: Resolution, report: BatchReport) -> None:
        """Without verification, settle the short batch at once, recorded whole. With it,
        park its entries and go on in a task of its own, so no sender waits for the check."""
        d = self._d
        if d.hub is None:
            case.unchecked()
            await self._settle_case(case, report)
            return
        d.holdings.park(case.batch.entries())
        report.handed += case.batch.numbers
        report.parts += 1
        d.spawn(lambda _: self._verify(case, report), case.batch)

    async def _verify(self, case: Resolution, report: BatchReport) -> None:
        """Check, re-send what ``PollTaskResult`` still lists (``<batch_id>.v<n>``, at most
        ``max_attempts`` rounds), then settle the whole batch once, with its record."""
        # Neither raises a Redis error: the hub answers every check, a lost re-send is an
        # answer, and the settle is shielded (its entries stay pending if it cannot write).
        await self._verify_rounds(case, report)
        await self._settle_case(case, report)
        self._part_done(report)

    async def _verify_rounds(self, case: Resolution, report: BatchReport) -> None:
        d = self._d
        assert d.hub is not None
        while True:
            # The round that checks the open numbers also re-sends those still listed, with
            # other batches' (at most max_attempts such re-sends).
            more = case.rounds < d.policy.max_attempts
            answer = await d.hub.check(case.batch.subset(case.open), self._send if more else None)
            case.absorb(answer.check)
            report.request_ids += answer.request_ids
            report.attempts += answer.attempts
            if answer.resent is Resent.NOT_SENT:
                return
            case.rounds += 1
            if answer.resent is Resent.CONFIRMED:
                case.all_confirmed()
                return
            if answer.resent is Resent.FAILED:
                assert answer.error is not None
                case.give_up(_dead_reason(answer.error), answer.error.summary())
                return
            if answer.resent is Resent.LOST:
                # What the checks so far proved is kept; the rest is recorded unplaced.
                case.unchecked()
                return

    async def _settle_case(self, case: Resolution, report: BatchReport) -> None:
        d = self._d
        tally = case.tally()
        if case.seen:
            report.add_verification(case.seen)

        def count() -> None:
            tally.add_to(report, d.totals)
            if tally.dead:
                log.warning("item.dead", batch_id=case.batch.batch_id, **tally.dead_fields())

        settlement = case.settlement(report.request_ids, report.attempts, self._now())
        await self._settle(settlement, case.batch.entries(), count)

    async def _dead_letter(
        self, batch: Batch, reason: str, exc: ApiError, report: BatchReport
    ) -> None:
        at = self._now()
        # Remembered too: a late duplicate of a dead-lettered number costs no request
        # (``ackworker dead replay`` forgets them again).
        settlement = Settlement(decided=batch.digests(), release=leases_of(batch.entries()))
        for entry in batch.entries():
            settlement.ack.append(entry.entry_id)
            record = entry_dead_letter(entry, reason, exc.summary(), report.attempts, at)
            settlement.dead.append(record)

        def count() -> None:
            report.dead += batch.size
            self._d.totals.dead[reason] += batch.size
            log.warning(
                "item.dead",
                batch_id=batch.batch_id,
                reason=reason,
                count=batch.size,
                code=exc.code,
                error=exc.summary(),
            )

        await self._settle(settlement, batch.entries(), count)

    async def _settle_duplicates(self, batch: Batch, report: BatchReport) -> None:
        entries = batch.entries()

        def count() -> None:
            report.duplicates += len(entries)
            self._d.totals.duplicates += len(entries)
            log.info("item.duplicate", batch_id=batch.batch_id, ids=batch.numbers)

        await self._settle(Settlement(ack=[e.entry_id for e in entries]), entries, count)

    async def _settle(
        self, settlement: Settlement, entries: list[Entry], count: Callable[[], None]
    ) -> None:
        """Write an outcome (see :meth:`~worker.store.settle.Settler.settle_shielded`) and,
        once it is written, ``count`` it; either way this process is done with the entries:
        settled, or left pending (lost to a claim, or Redis away) for whoever holds them."""
        result = await self._d.settler.settle_shielded(settlement, self._d.clock, len(entries))
        self._d.holdings.discard(entries)
        if result is not None and result.applied:
            count()

    def _now(self) -> str:
        return iso_utc(self._d.clock.now())


def _dead_reason(exc: ApiError) -> str:
    if isinstance(exc, PermanentApiError):
        return DeadReason.REJECTED
    return DeadReason.RETRIES_EXHAUSTED
