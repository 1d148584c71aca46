"""Reconciliation: what the ``Result`` of each request says about the numbers sent.

``Result`` counts numbers the service newly confirmed. A shortfall says how many were not
confirmed, not which; re-sending the same batch is safe because already confirmed numbers
count 0, so the sum of the answers is what was confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from worker.entries import Batch


@dataclass(frozen=True, slots=True)
class Verdict:
    """``confirmed`` is capped at ``submitted``; at most one of shortfall and overcount is set."""

    submitted: int
    confirmed: int
    shortfall: int
    overcount: int

    @property
    def complete(self) -> bool:
        """Every number confirmed, no more and no less."""
        return self.shortfall == 0 and self.overcount == 0


def assess(submitted: int, results: Sequence[int]) -> Verdict:
    """Compare the unique numbers submitted with the sum of every answer's ``Result``."""
    total = sum(results)
    return Verdict(
        submitted=submitted,
        confirmed=min(total, submitted),
        shortfall=max(0, submitted - total),
        overcount=max(0, total - submitted),
    )


def needs_resend(submitted: int, first_result: int) -> bool:
    """A short first answer earns exactly one resend of the same batch."""
    return first_result < submitted


def reconcile_record(
    batch: Batch, verdict: Verdict, request_ids: Sequence[str], at: str
) -> dict[str, str]:
    """The ``<prefix>:reconcile`` entry for a batch whose answers did not add up.

    ``at`` is an ISO 8601 UTC timestamp.
    """
    return {
        "batch_id": batch.batch_id,
        "kind": "shortfall" if verdict.shortfall else "overcount",
        "submitted": str(verdict.submitted),
        "confirmed": str(verdict.confirmed),
        "shortfall": str(verdict.shortfall),
        "overcount": str(verdict.overcount),
        "ids": orjson.dumps(batch.numbers).decode(),
        "request_ids": orjson.dumps(list(request_ids)).decode(),
        "at": at,
    }
