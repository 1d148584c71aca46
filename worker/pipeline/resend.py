"""Re-sending what a verification round found still listed: many batches, few requests.

The numbers a round of :mod:`worker.pipeline.coalesce` finds still listed are sent again by
the round itself, the listed numbers of several batches packed into requests of up to
``batch_size`` numbers (one batch's numbers never split between two). A request that
confirmed all it carried settles its batches' numbers; a short one leaves them to the next
round's check.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

import anyio

from worker.api.client import AckResult
from worker.clock import Clock
from worker.entries import Batch, Entry
from worker.errors import ApiError, PermanentApiError, describe
from worker.logs import get_logger
from worker.pipeline.report import BatchReport
from worker.pipeline.verify import Check
from worker.store.connection import REDIS_ERRORS

log = get_logger("verify")

Send = Callable[[Batch, BatchReport], Awaitable[AckResult | ApiError]]
"""How a lane sends a batch (the processor's sender: gate, limiter, retries)."""


class Resent(StrEnum):
    """What became of a batch's still-listed numbers after a round."""

    NOT_SENT = "not_sent"
    """Nothing was listed, the check failed, or the batch asked for no re-send."""
    CONFIRMED = "confirmed"
    """The request that carried them confirmed everything it carried."""
    SHORT = "short"
    """It confirmed less: the next round's check says which are still listed."""
    FAILED = "failed"
    """It failed for good (``error``): they are dead-lettered."""
    LOST = "lost"
    """Redis failed around the send: whether it went out is unknown."""


@dataclass(slots=True)
class Answer:
    """What a round did for one batch: its ``check``, and the re-send of its listed numbers
    with the ``request_ids`` and ``attempts`` it took."""

    check: Check
    resent: Resent = Resent.NOT_SENT
    error: ApiError | None = None
    request_ids: list[str] = field(default_factory=list)
    attempts: int = 0


@dataclass(slots=True)
class Waiter:
    """One short batch waiting for a round: its numbers, when it came, and how to re-send
    (None: no re-send is wanted, only the check); ``answer`` once the round is done."""

    batch_id: str
    groups: dict[str, list[Entry]]
    since: float
    account: str
    send: Send | None
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Answer | None = None


class Resender:
    """Sends the listed numbers of a round's batches in packed requests (``batch_size``
    numbers at most); ``confirmed`` is told how many each request confirmed."""

    def __init__(self, clock: Clock, batch_size: int, confirmed: Callable[[int], None]) -> None:
        self._clock = clock
        self._batch_size = batch_size
        self._confirmed = confirmed
        self._seq = itertools.count(1)

    async def send(self, served: list[Waiter]) -> None:
        """Send the served batches' listed numbers again, packed into full requests; a pack
        the API rejects is sent again batch by batch."""
        async with anyio.create_task_group() as tg:
            for pack in packs(served, self._batch_size):
                tg.start_soon(self._send_pack, pack)

    async def _send_pack(self, pack: list[Waiter]) -> None:
        merged = _merged(pack, f"{pack[0].batch_id}.v{next(self._seq)}")
        report = BatchReport(merged.batch_id, merged.size, self._clock.monotonic())
        send = pack[0].send
        assert send is not None
        outcome, error = await self._outcome(send, merged, report)
        log.info(
            "reconcile.resent",
            batch_id=merged.batch_id,
            batches=[w.batch_id for w in pack],
            numbers=len(merged.groups),
            outcome=outcome.value,
            request_ids=report.request_ids,
        )
        for waiter in pack:
            assert waiter.answer is not None
            waiter.answer.resent, waiter.answer.error = outcome, error
            waiter.answer.request_ids += report.request_ids
            waiter.answer.attempts += report.attempts
        if isinstance(error, PermanentApiError) and len(pack) > 1:
            # One batch's number may be what the API refuses: each batch on its own, so the
            # others are not dead-lettered with it.
            for waiter in pack:
                await self._send_pack([waiter])

    async def _outcome(
        self, send: Send, merged: Batch, report: BatchReport
    ) -> tuple[Resent, ApiError | None]:
        try:
            sent = await send(merged, report)
        except REDIS_ERRORS as exc:
            error = describe(exc)
            log.warning(
                "batch.followup_failed", batch_id=merged.batch_id, step="resend", error=error
            )
            return Resent.LOST, None
        if isinstance(sent, ApiError):
            return Resent.FAILED, sent
        self._confirmed(sent.result)
        return (Resent.CONFIRMED if sent.result >= len(merged.groups) else Resent.SHORT), None


def _merged(pack: list[Waiter], batch_id: str) -> Batch:
    """One request's batch: the listed numbers of every batch in ``pack``."""
    merged = Batch(batch_id, account=pack[0].account)
    for waiter in pack:
        assert waiter.answer is not None
        for number in waiter.answer.check.listed:
            merged.groups[number] = waiter.groups[number]
    return merged


def packs(served: list[Waiter], size: int) -> list[list[Waiter]]:
    """The batches with listed numbers to send again, packed in order into requests of at
    most ``size`` numbers; one batch's numbers always go in one request."""
    packs: list[list[Waiter]] = []
    room = 0
    for waiter in served:
        assert waiter.answer is not None
        check = waiter.answer.check
        need = len(check.listed)
        if waiter.send is None or check.failed or not need:
            continue
        if need > room:
            packs.append([])
            room = size
        packs[-1].append(waiter)
        room -= need
    return packs
