"""One request's way out, retried: send gate → limiter → client, until an answer or a final error.

A fatal answer (credentials, clock) closes the :class:`~worker.pipeline.sendgate.SendGate` and
the batch waits at it. An endpoint that is away pauses the account's sending fleet-wide
(:mod:`worker.store.limiter`): every request tells the limiter what it learnt (an answer, or
that the endpoint is away). Retryable failures are retried with back-off
(:class:`~worker.retry.ApiRetry`) until both ``max_attempts`` and the batch's time budget
(:class:`~worker.retry.RetryBudget`) are spent, which an outage never spends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.api.client import AckResult
from worker.entries import Batch
from worker.errors import ApiError, FatalApiError
from worker.logs import get_logger
from worker.pipeline.report import BatchReport
from worker.retry import ApiRetry, RetryBudget
from worker.store.limiter import Slot
from worker.totals import ACKNOWLEDGE

if TYPE_CHECKING:
    from worker.pipeline.processor import ProcessorDeps

log = get_logger("processor")


class Sender:
    """Sends batches for one lane's processor; ``deps`` are the processor's."""

    def __init__(self, deps: ProcessorDeps) -> None:
        self._d = deps

    async def send(self, batch: Batch, report: BatchReport) -> AckResult | ApiError:
        """Send until an answer or a final error; fatal answers wait at the gate, an
        endpoint that is away at the limiter's pause."""
        token = object()
        try:
            return await self._attempts(batch, report, token)
        finally:
            self._d.gate.release(token)

    async def _attempts(
        self, batch: Batch, report: BatchReport, token: object
    ) -> AckResult | ApiError:
        d = self._d
        retry = ApiRetry(
            d.policy, d.rng, log=log, event="api.retry_scheduled", throttled=d.limiter.throttled
        )
        budget = RetryBudget(d.policy.budget_s, d.clock, d.limiter.outage)
        while True:
            await d.gate.wait_turn(token)
            try:
                result = await self._attempt(batch, report)
            except FatalApiError as exc:
                d.gate.on_fatal(exc, token)
                continue
            except ApiError as exc:
                if exc.request_id:
                    report.request_ids.append(exc.request_id)
                # Given up only when both the attempts and the time budget are spent; an
                # endpoint that is away never spends the budget (the fleet pauses instead).
                spent = budget.spent(exc)
                if not await retry.failed(exc) and (spent or not exc.retryable):
                    return exc
                d.totals.retries[exc.code] += 1
                await d.clock.sleep(retry.back_off(exc, batch_id=batch.batch_id))
                continue
            report.request_ids.append(result.request_id)
            return result

    async def _attempt(self, batch: Batch, report: BatchReport) -> AckResult:
        d = self._d
        async with d.send_slots:
            slot = await d.limiter.acquire()
            epoch = d.gate.epoch
            for entry in batch.entries():
                entry.sent = True
            report.attempts += 1
            d.totals.count_request(ACKNOWLEDGE, batch.account)
            try:
                result = await d.client.acknowledge(batch.numbers)
            except ApiError as exc:
                await self._heard(slot, epoch, exc)
                raise
            await self._heard(slot, epoch, None)
            return result

    async def _heard(self, slot: Slot, epoch: int, exc: ApiError | None) -> None:
        """Tell the send gate and the fleet what one request learnt about the endpoint."""
        d = self._d
        if exc is not None and exc.endpoint_down:
            await d.limiter.unreachable(exc)
            return
        if exc is None or not exc.fatal:
            d.gate.on_answer(epoch)
        await d.limiter.answered(slot)
