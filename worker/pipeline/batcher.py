"""Batching: entries in, batches of at most ``batch_size`` unique numbers of one account out.

A batch closes when it holds ``batch_size`` unique numbers, or ``linger_ms`` after its first
entry, whichever comes first. Each account has its own open batch, so batches never mix
accounts. The intake loop (:mod:`worker.pipeline.intake`) lets Redis do the lingering: it blocks in
XREADGROUP for the time the oldest open batch has left, so no timer task and no cancelled
receive can ever drop an entry between stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.entries import Batch, Entry


@dataclass(slots=True)
class _Open:
    batch: Batch
    deadline: float


class BatchAssembler:
    """Pure batching state: feed entries, take full batches. No I/O, no time."""

    def __init__(self, batch_size: int, linger_ms: int, consumer: str) -> None:
        self._size = batch_size
        self._linger_s = linger_ms / 1000.0
        self._consumer = consumer
        self._open: dict[str, _Open] = {}  # by account, oldest first

    @property
    def room(self) -> int:
        """How many more unique numbers the fullest open batch takes (``batch_size`` when
        none is open): reading that many can close at most one batch per account."""
        fullest = max((len(o.batch.groups) for o in self._open.values()), default=0)
        return self._size - fullest

    def time_left_s(self, now: float) -> float | None:
        """Seconds until the oldest open batch must close; ``None`` when none is open."""
        if not self._open:
            return None
        return max(0.0, min(o.deadline for o in self._open.values()) - now)

    @property
    def open_batch(self) -> Batch | None:
        """The oldest batch being filled, if any."""
        return next((o.batch for o in self._open.values()), None)

    def feed(self, entries: list[Entry], now: float) -> list[Batch]:
        """Add entries in order; return every batch that reaches ``batch_size`` unique numbers.

        ``now`` is monotonic seconds; a batch opened now closes ``linger_ms`` later.
        """
        full: list[Batch] = []
        for entry in entries:
            current = self._open.get(entry.account)
            if current is None:
                batch = Batch.new(self._consumer, entry.account)
                current = self._open[entry.account] = _Open(batch, now + self._linger_s)
            current.batch.add(entry)
            if len(current.batch.groups) >= self._size:
                del self._open[entry.account]
                full.append(current.batch)
        return full

    def take_open(self) -> list[Batch]:
        """Close and return every open batch (input ended)."""
        batches = [o.batch for o in self._open.values()]
        self._open.clear()
        return batches

    def take_expired(self, now: float) -> list[Batch]:
        """Close and return the open batches whose linger has run out."""
        expired = [account for account, o in self._open.items() if now >= o.deadline]
        return [self._open.pop(account).batch for account in expired]
