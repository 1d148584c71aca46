"""What ``batch.settled`` says about one batch, gathered while the batch is worked on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.entries import DEFAULT_ACCOUNT


@dataclass(slots=True)
class BatchReport:
    """What ``batch.settled`` says about one batch."""

    batch_id: str
    size: int
    started: float
    account: str = DEFAULT_ACCOUNT
    confirmed: int = 0
    duplicates: int = 0
    dead: int = 0
    shortfall: int = 0
    attempts: int = 0
    request_ids: list[str] = field(default_factory=list)

    def fields(self, now: float) -> dict[str, Any]:
        """The event's fields; ``latency_ms`` from reservation to the last settle."""
        return {
            "batch_id": self.batch_id,
            "account": self.account,
            "size": self.size,
            "confirmed": self.confirmed,
            "duplicates": self.duplicates,
            "dead": self.dead,
            "shortfall": self.shortfall,
            "attempts": self.attempts,
            "latency_ms": round((now - self.started) * 1000.0, 1),
            "request_ids": self.request_ids,
        }
