"""The intake loop: reads and claims entries and closes batches, until asked to stop.

Lingering is done by Redis: with a batch open, XREADGROUP blocks only for the time the batch
has left, so no timer task exists and no entry ever waits in a cancellable hand-off between
stages. :class:`~worker.entries.Holdings` is the prefetch bound: the intake reads nothing
while it holds its capacity. Each account's lane has its own intake on its own stream (see
:mod:`worker.pipeline.lanes`), so that bound is per account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Batch, Entry, Holdings
from worker.logs import get_logger
from worker.pipeline.batcher import BatchAssembler
from worker.store.connection import REDIS_ERRORS
from worker.store.source import Recovery, StreamSource

log = get_logger("intake")

READ_AHEAD_BATCHES = 4


@dataclass(frozen=True, slots=True)
class IntakeConfig:
    """Sizes in entries, times in milliseconds."""

    consumer: str
    batch_size: int
    linger_ms: int
    claim_every_ms: int
    idle_block_ms: int = 500


class Intake:
    """Feeds each account's ``batches`` stream; closes them when stopping, after the open
    batches."""

    def __init__(
        self,
        source: StreamSource,
        holdings: Holdings,
        batches: Mapping[str, MemoryObjectSendStream[Batch]],
        config: IntakeConfig,
        stopping: anyio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._source = source
        self._holdings = holdings
        self._batches = batches
        self._config = config
        self._stopping = stopping
        self._clock = clock
        self._assembler = BatchAssembler(config.batch_size, config.linger_ms, config.consumer)
        self._next_claim = 0.0
        self._recovery = Recovery(source, clock)

    async def run(self) -> None:
        """Loop until ``stopping`` is set; then send the open batch and close the stream."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._step()
                    self._recovery.ok()
                except REDIS_ERRORS as exc:
                    await self._recovery.failed(exc)
            for batch in self._assembler.take_open():
                await self._batches[batch.account].send(batch)
        finally:
            for stream in self._batches.values():
                stream.close()

    async def _step(self) -> None:
        now = self._clock.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._config.claim_every_ms / 1000.0
            room = self._assembler.room
            await self._take(await self._source.claim_stale(room, self._holdings))
        expired = self._assembler.take_expired(self._clock.monotonic())
        for batch in expired:
            await self._batches[batch.account].send(batch)
        if expired:
            return
        if self._holdings.full:
            # Prefetch bound reached (busy rechecks hold entries beyond the queued batches);
            # wait for room, but no longer than the open batch may linger.
            with anyio.move_on_after(self._block_ms() / 1000.0):
                await self._holdings.wait_for_room()
            return
        await self._take(await self._source.read(self._read_count(), self._block_ms()))

    def _read_count(self) -> int:
        """Fill the open batch; from a backlog, read up to READ_AHEAD_BATCHES batches in one
        XREADGROUP (one round trip instead of one per batch), within the prefetch bound."""
        room = self._assembler.room
        ahead = room + (READ_AHEAD_BATCHES - 1) * self._config.batch_size
        return max(room, min(ahead, self._holdings.free))

    def _block_ms(self) -> int:
        now = self._clock.monotonic()
        left = self._assembler.time_left_s(now)
        block = self._config.idle_block_ms
        if left is not None:
            # Never block longer than idle_block_ms either, so a stop request is noticed
            # quickly even when linger_ms is long.
            block = min(block, math.ceil(left * 1000.0))
        until_claim = math.ceil((self._next_claim - now) * 1000.0)
        # XREADGROUP's BLOCK 0 means forever, so never ask for less than 1 ms.
        return max(1, min(block, until_claim))

    async def _take(self, entries: list[Entry]) -> None:
        # A claim can return an entry this process already holds (its idle time ran out
        # before the lease renewer refreshed it); it is being worked on, so it is not taken twice.
        entries = [e for e in entries if e.entry_id not in self._holdings]
        if not entries:
            return
        self._holdings.add(entries)
        for batch in self._assembler.feed(entries, self._clock.monotonic()):
            await self._batches[batch.account].send(batch)
