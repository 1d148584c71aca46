"""Request counters of the stand-in, for ``/_admin/stats``, tests and benchmarks.

Everything here is O(1) per request: the benchmarks push more than 1000 requests a second
through the stand-in, so counting must cost far less than answering.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

UNKNOWN_ACTION = "(unknown)"
"""Bucket for requests whose action is missing or not served, so junk cannot grow the map."""


class RequestStats:
    """Counts API requests (never admin ones): totals, rates, concurrency, batch sizes."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started_s = clock()
        self.in_flight = 0
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests_total = 0
        self.by_action: Counter[str] = Counter()
        self.by_error_code: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.max_in_flight = self.in_flight
        self.peak_rps = 0
        self._window_s = int(self._clock())
        self._window_count = 0
        self._last_full_count = 0

    def reset(self) -> None:
        """Zero every counter; ``in_flight`` is a gauge and stays."""
        self._reset_counters()

    def request_started(self) -> None:
        """Count a request on arrival, in its one-second window."""
        self._roll(int(self._clock()))
        self._window_count += 1
        self.requests_total += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def request_finished(self) -> None:
        """The handler is done (answered, failed, aborted or cancelled)."""
        self.in_flight -= 1

    def _roll(self, now_s: int) -> None:
        # Windows are whole seconds of the monotonic clock; a gap means idle seconds.
        if now_s == self._window_s:
            return
        finished = self._window_count
        self.peak_rps = max(self.peak_rps, finished)
        self._last_full_count = finished if now_s == self._window_s + 1 else 0
        self._window_s = now_s
        self._window_count = 0

    def snapshot(self) -> dict[str, object]:
        """The request counters as JSON-ready values."""
        self._roll(int(self._clock()))
        return {
            "uptime_s": round(self._clock() - self._started_s, 3),
            "requests_total": self.requests_total,
            "requests_by_action": dict(self.by_action),
            "errors_by_code": dict(self.by_error_code),
            "requests_last_second": self._last_full_count,
            "peak_rps": self.peak_rps,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
        }
