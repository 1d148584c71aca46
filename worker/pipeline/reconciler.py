"""Reconciliation: what the ``Result`` of each request says about the numbers sent.

``Result`` counts numbers the service newly confirmed. A shortfall says how many were not
confirmed, not which, so a short batch is never sent again blind: re-sending it would spend
a request on numbers already confirmed, and the numbers the API does not list would come up
short again anyway.

When verification is on, :class:`Resolution` keeps the books while
:mod:`worker.pipeline.coalesce` asks ``PollTaskResult`` which numbers are still listed, and the
processor re-sends only those, round by round: every number ends confirmed, found not listed
(confirmed elsewhere or unknown to the API), dead-lettered ``unconfirmed``, or, when no check
could place it, named unplaced in the batch's one reconcile record. Without verification the
record names the whole batch, and nothing is sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from worker.entries import Batch
from worker.logs import get_logger
from worker.pipeline.verify import Check
from worker.reasons import DeadReason
from worker.store.settle import Settlement, leases_of
from worker.store.source import entry_dead_letter
from worker.totals import Totals

log = get_logger("reconciler")


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


def _json(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def reconcile_record(
    batch: Batch, verdict: Verdict, request_ids: Sequence[str], at: str
) -> dict[str, str]:
    """The ``<prefix>:reconcile`` entry for a batch whose answers did not add up, unverified:
    ``ids`` lists every number of the batch. ``at`` is an ISO 8601 UTC timestamp.
    """
    return {
        "batch_id": batch.batch_id,
        "kind": "shortfall" if verdict.shortfall else "overcount",
        "verified": "false",
        "submitted": str(verdict.submitted),
        "confirmed": str(verdict.confirmed),
        "shortfall": str(verdict.shortfall),
        "overcount": str(verdict.overcount),
        "ids": _json(batch.numbers),
        "request_ids": _json(request_ids),
        "at": at,
    }


def verdict_fields(batch: Batch, verdict: Verdict, request_ids: list[str]) -> dict[str, Any]:
    """The fields of ``batch.shortfall`` and ``batch.overcount``."""
    return {
        "batch_id": batch.batch_id,
        "submitted": verdict.submitted,
        "confirmed": verdict.confirmed,
        "shortfall": verdict.shortfall,
        "overcount": verdict.overcount,
        "request_ids": request_ids,
    }


class Counts(Protocol):
    """What a batch report counts (see ``worker.pipeline.report.BatchReport``)."""

    confirmed: int
    duplicates: int
    dead: int
    shortfall: int


@dataclass(frozen=True, slots=True)
class Tally:
    """What a resolved shortfall adds to the counts: numbers ``confirmed`` by the answers,
    ``duplicates`` (riders), ``dead`` entries (with ``reason``), numbers left as ``shortfall``."""

    confirmed: int
    duplicates: int
    dead: int
    reason: str
    error: str
    shortfall: int

    def dead_fields(self) -> dict[str, Any]:
        """The fields of ``item.dead`` for the dead-lettered entries."""
        return {"reason": self.reason, "count": self.dead, "error": self.error}

    def add_to(self, report: Counts, totals: Totals) -> None:
        """Add to a batch's report and the process's totals."""
        for counts in (report, totals):
            counts.confirmed += self.confirmed
            counts.duplicates += self.duplicates
            counts.shortfall += self.shortfall
        report.dead += self.dead
        if self.dead:
            totals.dead[self.reason] += self.dead


@dataclass(slots=True)
class Resolution:
    """The books of one short batch while verification settles it, round by round.

    ``open``: numbers ``PollTaskResult`` still listed at the last check, to be sent again.
    ``confirmed``: numbers proved confirmed by this batch's own answers (every not-listed
    number of a round whose answers confirmed exactly that many).
    ``unaccounted``: not-listed numbers of a round whose answers do not account for them all;
    ``elsewhere`` of them (at least; exactly when nothing was ``unknown``) were confirmed by
    someone else or are unknown to the API: the batch's recorded shortfall.
    ``unknown``: numbers no check could place. All but these are remembered for dedupe.
    ``seen`` sums what the checks found, for the batch's log line.
    """

    batch: Batch
    answered: int  # what the first answer confirmed
    answered_total: int
    open: list[str]
    confirmed: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    elsewhere: int = 0
    rounds: int = 0
    verified: bool = False
    dead_reason: str = DeadReason.UNCONFIRMED.value
    dead_error: str = ""
    seen: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, batch: Batch, verdict: Verdict) -> Resolution:
        """The books after the batch's first answer."""
        return cls(batch, verdict.confirmed, verdict.confirmed, batch.numbers)

    def absorb(self, check: Check) -> None:
        """Place the open numbers by what a check of them learnt; log the check."""
        where = {"batch_id": self.batch.batch_id, "round": self.rounds, **check.counts()}
        for name in ("listed", "not_listed", "unknown", "pages"):
            self.seen[name] = self.seen.get(name, 0) + int(where[name] or 0)
        self.seen["checks"] = self.seen.get("checks", 0) + 1
        if check.failed:
            log.warning("reconcile.verify_failed", **where)
            self.unchecked()
            return
        log.info("reconcile.verified", **where)
        self.verified = True
        if self.rounds:
            # Listed at the last check, then re-sent: no longer listed means that re-send
            # confirmed it (the batch holds the numbers' leases, so nobody else sent them).
            self.confirmed += check.not_listed
            self.answered_total += len(check.not_listed)
        elif not check.unknown and len(check.not_listed) == self.answered:
            self.confirmed += check.not_listed
        else:
            self.unaccounted += check.not_listed
            self.elsewhere += max(0, len(check.not_listed) - self.answered)
        self.unknown += check.unknown
        self.open = check.listed

    def unchecked(self) -> None:
        """The open numbers stay unplaced (no verifier, or a check that learnt nothing)."""
        self.unknown += self.open
        self.open = []

    def all_confirmed(self) -> None:
        """The re-send of the open numbers confirmed every one of them."""
        self.confirmed += self.open
        self.answered_total += len(self.open)
        self.open = []

    def give_up(self, reason: str, error: str) -> None:
        """A re-send failed for good: the open numbers are dead-lettered with ``reason``."""
        self.dead_reason, self.dead_error = reason, error

    def tally(self) -> Tally:
        """The counts, once resolved: ``open`` numbers are dead, the rest add up to the size."""
        b = self.batch
        submitted = len(b.groups)
        dead_entries = sum(len(b.groups[n]) for n in self.open)
        confirmed = min(self.answered_total, submitted)
        return Tally(
            confirmed=confirmed,
            duplicates=b.size - submitted - (dead_entries - len(self.open)),
            dead=dead_entries,
            reason=self.dead_reason,
            error=self.dead_error
            or f"still listed by PollTaskResult after {self.rounds} verified re-send round(s)",
            shortfall=max(0, submitted - confirmed - len(self.open)),
        )

    def decided(self) -> list[str]:
        """Numbers placed but not proven confirmed by this batch: not listed (confirmed
        elsewhere or unknown to the API) and dead-lettered. Dedupe memory keeps them with the
        outcome; the ones no check could place are not remembered."""
        return [*self.unaccounted, *self.open]

    def settlement(self, request_ids: Sequence[str], attempts: int, at: str) -> Settlement:
        """The one settle of the whole batch: every entry acknowledged, placed numbers
        remembered, open ones dead-lettered, and the reconcile record."""
        b = self.batch
        s = Settlement(ack=[e.entry_id for e in b.entries()], release=leases_of(b.entries()))
        if self.confirmed:
            s.confirmed = b.subset(self.confirmed).digests()
        if decided := self.decided():
            s.decided = b.subset(decided).digests()
        t = self.tally()
        for number in self.open:
            for entry in b.groups[number]:
                s.dead.append(entry_dead_letter(entry, t.reason, t.error, attempts, at))
        s.reconcile.append(self.record(request_ids, at))
        return s

    def record(self, request_ids: Sequence[str], at: str) -> dict[str, str]:
        """The reconcile record: unverified, every number; verified, only those that may be
        unconfirmed and have no dead letter (``ids``), with the ``unknown`` ones also apart and
        the dead-lettered ``unconfirmed`` ones listed on their own."""
        submitted = len(self.batch.groups)
        confirmed = min(self.answered_total, submitted)
        # Numbers still listed at the end are dead letters: their outcome is there, not here.
        verdict = Verdict(submitted, confirmed, submitted - confirmed - len(self.open), 0)
        record = {**reconcile_record(self.batch, verdict, request_ids, at), "kind": "shortfall"}
        if not self.verified:
            return record
        named = {*self.unknown, *self.unaccounted}
        return {
            **record,
            "verified": "true",
            "ids": _json([n for n in self.batch.numbers if n in named]),
            "unconfirmed": _json(self.open),
            "unknown": _json(self.unknown),
            "elsewhere": str(self.elsewhere),
            "rounds": str(self.rounds),
        }
