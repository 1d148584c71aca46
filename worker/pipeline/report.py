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
    verification: dict[str, int] | None = None
    # Parts of the batch still being worked on: the sender's, and a shortfall's verification,
    # which goes on in a task of its own. The last part to finish logs the batch.
    parts: int = 1
    # Numbers handed to a task of their own (a recheck of busy ones, a shortfall's
    # verification): on a Redis failure, the sender's part must not forget their entries.
    handed: list[str] = field(default_factory=list)

    def part_done(self) -> bool:
        """One part finished; True when it was the last."""
        self.parts -= 1
        return self.parts == 0

    def add_verification(self, seen: dict[str, int]) -> None:
        """Add what checking one short part of the batch found (a split batch has two)."""
        mine = self.verification or {}
        self.verification = {k: mine.get(k, 0) + seen.get(k, 0) for k in {*mine, *seen}}

    def fields(self, now: float) -> dict[str, Any]:
        """The event's fields; ``latency_ms`` from reservation to the last settle, and
        ``verification`` only for a batch whose shortfall was checked."""
        fields: dict[str, Any] = {
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
        if self.verification is not None:
            # What checking its shortfall found: numbers still listed (sent again), not
            # listed, unplaced; poll pages of its rounds, each shared by ``batches``.
            fields["verification"] = self.verification
        return fields
