"""Batching: entries in, batches of at most ``batch_size`` unique numbers out.

A batch closes when it holds ``batch_size`` unique numbers, or ``linger_ms`` after its first
entry, whichever comes first. The intake loop (:mod:`worker.intake`) lets Redis do the
lingering: it blocks in XREADGROUP for the time the open batch has left, so no timer task
and no cancelled receive can ever drop an entry between stages.
"""

from __future__ import annotations

from worker.entries import Batch, Entry


class BatchAssembler:
    """Pure batching state: feed entries, take full batches. No I/O, no time."""

    def __init__(self, batch_size: int, linger_ms: int, consumer: str) -> None:
        self._size = batch_size
        self._linger_s = linger_ms / 1000.0
        self._consumer = consumer
        self._open: Batch | None = None
        self._deadline = 0.0

    @property
    def room(self) -> int:
        """How many more unique numbers the open batch takes (``batch_size`` when none)."""
        return self._size - (len(self._open.groups) if self._open else 0)

    def time_left_s(self, now: float) -> float | None:
        """Seconds until the open batch must close; ``None`` when no batch is open."""
        return None if self._open is None else max(0.0, self._deadline - now)

    @property
    def open_batch(self) -> Batch | None:
        """The batch being filled, if any."""
        return self._open

    def feed(self, entries: list[Entry], now: float) -> list[Batch]:
        """Add entries in order; yield every batch that reaches ``batch_size`` unique numbers.

        ``now`` is monotonic seconds; a batch opened now closes ``linger_ms`` later.
        """
        full: list[Batch] = []
        for entry in entries:
            batch = self._open
            if batch is None:
                batch = self._open = Batch.new(self._consumer)
                self._deadline = now + self._linger_s
            batch.add(entry)
            if len(batch.groups) >= self._size:
                self._open = None
                full.append(batch)
        return full

    def take_open(self) -> Batch | None:
        """Close and return the open batch (input ended)."""
        batch, self._open = self._open, None
        return batch

    def take_expired(self, now: float) -> Batch | None:
        """Close and return the open batch if its linger has run out."""
        if self._open is not None and now >= self._deadline:
            return self.take_open()
        return None
