"""The ``worker.stats`` event: every ``stats_interval_s``, one line that says whether the
worker keeps up, whether anything is being lost, and why.

Interval fields count what happened since the previous event (the first covers the time
since start); ``_total`` fields count since start; the rest are levels read at that moment.
A failed Redis read leaves ``backlog`` and ``pending`` null and adds ``redis_error``: the
event is still logged and the loop goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.clock import Clock
from worker.logs import get_logger
from worker.observe.view import StreamSample, WorkerView
from worker.totals import Totals

log = get_logger("stats")


@dataclass(frozen=True, slots=True)
class _Mark:
    """The running counts at one moment, to subtract from the next."""

    at_s: float
    confirmed: int
    duplicates: int
    dead: int
    shortfall: int
    requests: int
    requests_by_action: dict[str, int]
    retries: int
    fleet_pauses: int
    rate_wait_s: float

    @classmethod
    def of(cls, totals: Totals, at_s: float) -> _Mark:
        return cls(
            at_s=at_s,
            confirmed=totals.confirmed,
            duplicates=totals.duplicates,
            dead=sum(totals.dead.values()),
            shortfall=totals.shortfall,
            requests=totals.requests,
            requests_by_action=totals.requests_by_action(),
            retries=sum(totals.retries.values()),
            fleet_pauses=totals.fleet_pauses,
            rate_wait_s=totals.rate_wait_s,
        )


def _change(old: Mapping[str, int], new: Mapping[str, int]) -> dict[str, int]:
    """``new`` minus ``old``, key by key, with the keys of ``new``."""
    return {key: count - old.get(key, 0) for key, count in new.items()}


class StatsReporter:
    """Logs ``worker.stats``; :meth:`run` loops, :meth:`report` is one step (for tests)."""

    def __init__(self, view: WorkerView, interval_s: float, clock: Clock) -> None:
        self._view = view
        self._interval_s = interval_s
        self._clock = clock
        self._mark = _Mark.of(view.totals, clock.monotonic())
        self._backlog: int | None = None

    async def run(self) -> None:
        """Log one event every ``interval_s`` until cancelled."""
        while True:
            await self._clock.sleep(self._interval_s)
            await self.report()

    async def report(self) -> dict[str, Any]:
        """Sample, log one ``worker.stats`` event and return its fields."""
        sample = await self._view.sample_stream()
        mark = _Mark.of(self._view.totals, self._clock.monotonic())
        fields = {**self._interval(self._mark, mark), **self._levels(sample)}
        self._mark = mark
        if sample.error is None:
            log.info("worker.stats", **fields)
        else:
            log.warning("worker.stats", **fields, redis_error=sample.error)
        return fields

    def _interval(self, old: _Mark, new: _Mark) -> dict[str, Any]:
        elapsed_s = max(new.at_s - old.at_s, 1e-9)
        settled = (new.confirmed + new.duplicates + new.dead + new.shortfall) - (
            old.confirmed + old.duplicates + old.dead + old.shortfall
        )
        return {
            "interval_s": round(elapsed_s, 3),
            "settled": settled,
            "settled_per_s": round(settled / elapsed_s, 2),
            "confirmed": new.confirmed - old.confirmed,
            "duplicates": new.duplicates - old.duplicates,
            "dead": new.dead - old.dead,
            "shortfall": new.shortfall - old.shortfall,
            "requests": new.requests - old.requests,
            "requests_by_action": _change(old.requests_by_action, new.requests_by_action),
            "retries": new.retries - old.retries,
            "fleet_pauses": new.fleet_pauses - old.fleet_pauses,
            "rate_wait_s": round(new.rate_wait_s - old.rate_wait_s, 3),
        }

    def _levels(self, sample: StreamSample) -> dict[str, Any]:
        view, totals = self._view, self._view.totals
        change = None
        if sample.backlog is not None and self._backlog is not None:
            change = sample.backlog - self._backlog
        if sample.backlog is not None:
            self._backlog = sample.backlog
        problem = view.sending_problem
        return {
            "backlog": sample.backlog,
            "backlog_change": change,
            "pending": sample.pending,
            "held": view.held,
            "in_flight": totals.in_flight,
            "effective_rate": round(totals.effective_rate, 3),
            "rate_limit": view.rate_limit_rps,
            "sending": "open" if problem is None else "paused",
            "problem": problem,
            "confirmed_total": totals.confirmed,
            "dead_total": sum(totals.dead.values()),
            "dead_reasons": dict(totals.dead),
            "shortfall_total": totals.shortfall,
        }
