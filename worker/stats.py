"""What the worker counts, and a read-only view of its live state for watching it.

:class:`Totals` is bumped on the hot path (per batch, per request) and read by
``worker.stopped``, the ``worker.stats`` events and the ``/metrics`` collector, so the hot
path never touches a metrics library. :class:`WorkerView` adds what only Redis knows (the
backlog and the pending count), read with a bounded timeout so a slow Redis cannot stall a
scrape or a stats event.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import anyio
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from worker.gate import SendGate, paused_accounts
from worker.keys import Keys
from worker.logs import scrubber

# Request latency buckets (seconds): a healthy API answers in tens of milliseconds, while
# http_timeout_s (default 15 s) bounds the slowest attempt.
REQUEST_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
REDIS_READ_TIMEOUT_S = 1.0


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

    ``in_flight`` is a level (requests awaiting an answer now), ``effective_rate`` the fleet's
    rate as the default account's limiter last answered (requests/s; ``account_rates`` holds it
    for every account), ``rate_wait_s`` the seconds senders spent
    waiting for rate-limit slots, ``fleet_pauses`` the throttling answers that paused the fleet.
    """

    batches: int = 0
    requests: int = 0
    confirmed: int = 0
    duplicates: int = 0
    shortfall: int = 0
    overcount: int = 0
    handed_back: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    rate_wait_s: float = 0.0
    fleet_pauses: int = 0
    effective_rate: float = 0.0
    account_rates: dict[str, float] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def settled(self) -> int:
        """Numbers that reached an outcome: confirmed, duplicate, dead or shortfall."""
        return self.confirmed + self.duplicates + self.shortfall + sum(self.dead.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot: the fields of ``worker.stopped``."""
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


@dataclass(frozen=True, slots=True)
class StreamSample:
    """``XLEN`` and the group's ``XPENDING`` count; both None and ``error`` set on failure."""

    backlog: int | None
    pending: int | None
    error: str | None = None


@dataclass(slots=True)
class WorkerView:
    """What the endpoint and ``worker.stats`` look at; the runner builds one per worker."""

    redis: Redis | RedisCluster  # the worker's client, whatever the deployment
    keys: Keys
    totals: Totals
    holdings: Sized  # the worker's held entries (every lane's)
    gate: SendGate
    stopping: anyio.Event
    rate_limit_rps: float
    redis_timeout_s: float = REDIS_READ_TIMEOUT_S
    # Every account's gate by name (the default account's is ``gate``); empty: just ``gate``.
    gates: Mapping[str, SendGate] = field(default_factory=dict)
    # With several accounts: their streams, where the input's entries wait to be sent.
    account_streams: tuple[str, ...] = ()

    @property
    def held(self) -> int:
        """Entries this process has read and not settled."""
        return len(self.holdings)

    @property
    def sending_problem(self) -> str | None:
        """None while every account may send, else the codes that closed gates (``code`` for
        the default account, ``account:code`` for the others)."""
        return paused_accounts(self.gates or {"default": self.gate}) or None

    async def sample_stream(self) -> StreamSample:
        """Read the backlog and pending count (the input stream's and, with several accounts,
        their streams' together); a failure is reported, never raised."""
        backlog = pending = 0
        try:
            with anyio.fail_after(self.redis_timeout_s):
                for stream in (self.keys.input, *self.account_streams):
                    backlog += int(await self.redis.xlen(stream))
                    summary: Any = await self.redis.xpending(stream, self.keys.group)
                    pending += int(summary["pending"])
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            return StreamSample(None, None, describe_error(exc))
        return StreamSample(backlog, pending)

    async def redis_problem(self) -> str | None:
        """None when Redis answers PING within the timeout, else what went wrong."""
        try:
            with anyio.fail_after(self.redis_timeout_s):
                await self.redis.ping()
        except (RedisError, OSError) as exc:
            return describe_error(exc)
        return None


def describe_error(exc: BaseException) -> str:
    """``Type: message``, short and scrubbed: it may reach a log line or an HTTP answer."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: no answer in time"
    return scrubber.scrub_text(f"{type(exc).__name__}: {exc}")[:300]
