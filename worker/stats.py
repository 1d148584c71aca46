"""Process-wide counters: what ``worker.stopped`` reports and later metrics read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Totals:
    """Counts since start. ``dead`` is by reason; ``retries`` by error code."""

    batches: int = 0
    requests: int = 0
    confirmed: int = 0
    duplicates: int = 0
    shortfall: int = 0
    overcount: int = 0
    handed_back: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "batches": self.batches,
            "requests": self.requests,
            "confirmed": self.confirmed,
            "duplicates": self.duplicates,
            "shortfall": self.shortfall,
            "overcount": self.overcount,
            "handed_back": self.handed_back,
            "dead": dict(self.dead),
            "dead_total": sum(self.dead.values()),
            "retries": dict(self.retries),
        }
