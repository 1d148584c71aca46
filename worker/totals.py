"""What the worker counts: plain counters and a latency histogram, no I/O.

:class:`Totals` is bumped on the hot path (per batch, per request) and read by
``worker.stopped``, the ``worker.stats`` events and the ``/metrics`` collector, so the hot
path never touches a metrics library. What only Redis knows is read by
:class:`~worker.observe.view.WorkerView`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from worker.entries import DEFAULT_ACCOUNT

# Request latency buckets (seconds): a healthy API answers in tens of milliseconds, while
# http_timeout_s (default 15 s) bounds the slowest attempt.
REQUEST_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)

ACKNOWLEDGE = "acknowledge"
"""``action`` of an ``AcknowledgeTaskResult`` request in :attr:`Totals.requests_by`."""
POLL = "poll"
"""``action`` of a ``PollTaskResult`` request (verification) in :attr:`Totals.requests_by`."""
ACTIONS = (ACKNOWLEDGE, POLL)
"""Every ``action``: what is reported shows each of them, 0 when none was sent, so a reader
never has to tell a missing count from a zero."""


@dataclass(slots=True)
class LatencyHistogram:
    """Request durations in fixed buckets: one bisect and two additions per observation."""

    bounds_s: tuple[float, ...] = REQUEST_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(REQUEST_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        # bisect_left puts a value equal to a bound in that bound's bucket (Prometheus "le").
        self.counts[bisect_left(self.bounds_s, seconds)] += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` pairs, ending with ``+Inf``."""
        labels = [repr(b) for b in self.bounds_s] + ["+Inf"]
        pairs, running = [], 0
        for label, count in zip(labels, self.counts, strict=True):
            running += count
            pairs.append((label, running))
        return pairs


@dataclass(slots=True)
class Totals:
    """Counts since start. ``dead`` is by reason; ``retries`` by error code.

    ``in_flight`` is a level (requests awaiting an answer now), ``account_rates`` the fleet's
    rate per account as its limiter last answered (requests/s), ``rate_wait_s`` the seconds
    senders spent waiting for rate-limit slots, ``fleet_pauses`` the throttling answers that
    paused the fleet, ``outage_wait_s`` the seconds senders spent held by an outage pause,
    ``probes`` the requests this process sent as the fleet's probe of an endpoint away,
    ``vanished`` the pending entries deleted or trimmed from a stream before they were
    settled (found when claiming), ``not_owned`` the entries this process settled after
    another consumer had claimed them (their outcomes left to it). ``requests`` counts every
    API request sent, ``requests_by`` the same by ``(action, account)``, ``action`` being
    :data:`ACKNOWLEDGE` or :data:`POLL`: both spend the account's quota.
    """

    batches: int = 0
    requests: int = 0
    confirmed: int = 0
    duplicates: int = 0
    shortfall: int = 0
    overcount: int = 0
    handed_back: int = 0
    vanished: int = 0
    not_owned: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    requests_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    rate_wait_s: float = 0.0
    fleet_pauses: int = 0
    outage_wait_s: float = 0.0
    probes: int = 0
    account_rates: dict[str, float] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def count_request(self, action: str, account: str = DEFAULT_ACCOUNT) -> None:
        """One API request of ``action`` sent for ``account``."""
        self.requests += 1
        self.requests_by[action, account] += 1

    def requests_by_action(self) -> dict[str, int]:
        """API requests sent since start by ``action``, every account together; every action
        of :data:`ACTIONS` present."""
        counts = dict.fromkeys(ACTIONS, 0)
        for (action, _account), count in self.requests_by.items():
            counts[action] = counts.get(action, 0) + count
        return counts

    @property
    def effective_rate(self) -> float:
        """The default account's rate as its limiter last answered (requests/s)."""
        return self.account_rates.get(DEFAULT_ACCOUNT, 0.0)

    @property
    def settled(self) -> int:
        """Numbers that reached an outcome: confirmed, duplicate, dead or shortfall."""
        return self.confirmed + self.duplicates + self.shortfall + sum(self.dead.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot: the fields of ``worker.stopped``."""
        return {
            "batches": self.batches,
            "requests": self.requests,
            "requests_by_action": self.requests_by_action(),
            "confirmed": self.confirmed,
            "duplicates": self.duplicates,
            "shortfall": self.shortfall,
            "overcount": self.overcount,
            "handed_back": self.handed_back,
            "vanished": self.vanished,
            "not_owned": self.not_owned,
            "dead": dict(self.dead),
            "dead_total": sum(self.dead.values()),
            "retries": dict(self.retries),
            "probes": self.probes,
        }
