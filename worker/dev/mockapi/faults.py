"""Fault injection: what can go wrong between a client and the Domain API, on demand.

:class:`Faults` is the mutable configuration (changed at run time through
``/_admin/faults``); :class:`FaultInjector` makes the decisions, with an injectable
``random.Random`` (seed it for reproducible runs) and monotonic clock. A rate of 0 draws no
random number, so a stand-in without faults spends nothing here and a seeded run's
sequence depends only on the faults that are switched on.

Where each fault strikes in a request (see ``app.py``): latency first; then the transport
faults (reset, hang, HTML proxy page), which never reach the service; then, after
authentication, the quota, throttling and 5xx answers, which confirm nothing; then the
action itself, where ``drop_rate`` loses single confirmations; last ``truncated_rate``,
which cuts the answer of an action that *did* happen, so the client cannot know its result.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_HANG_S = 3600.0
"""Upper bound of ``hang_s``: a hung request never outlives an hour."""


class InvalidFault(ValueError):
    """A fault setting is out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(slots=True)
class Faults:
    """Which faults the stand-in injects; every rate is a probability per API request."""

    latency_ms: float = 0.0
    """Added delay before answering, in milliseconds."""
    jitter_ms: float = 0.0
    """Extra random delay, uniform in ``[0, jitter_ms]`` milliseconds, on top of latency."""
    throttle_rate: float = 0.0
    """Answer ``Throttling.User`` (HTTP 400)."""
    retry_after_ms: int | None = None
    """When set, throttling answers carry ``x-acs-retry-after`` with this many milliseconds."""
    error_rate: float = 0.0
    """Answer 503 ``ServiceUnavailable`` and 500 ``InternalError``, alternately."""
    quota_rps: float = 0.0
    """Requests a second allowed (token bucket, 1 s burst); over it ``Throttling.User``; 0 = off."""
    reset_rate: float = 0.0
    """Abort the connection (TCP reset) without answering."""
    hang_rate: float = 0.0
    """Hold the request unanswered for ``hang_s``, then drop the connection."""
    hang_s: float = 60.0
    """How long a hung request is held, in seconds (at most ``MAX_HANG_S``)."""
    html_rate: float = 0.0
    """Answer HTTP 502 with an HTML proxy error page."""
    truncated_rate: float = 0.0
    """Perform the action, then answer HTTP 200 with the JSON cut in half."""
    drop_rate: float = 0.0
    """Per number: silently lose the confirmation (it stays pending, counts 0 in Result)."""
    clock_offset_s: float = 0.0
    """The stand-in's clock runs this many seconds ahead (negative: behind)."""

    def as_dict(self) -> dict[str, object]:
        """Every setting by name (the ``/_admin/faults`` answer)."""
        return dataclasses.asdict(self)

    def update(self, changes: Mapping[str, object]) -> None:
        """Apply a partial update; validates everything first, so it applies all or nothing.

        Raises :class:`InvalidFault` naming the first unknown or out-of-range field.
        """
        checked = {name: validate_fault(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)


_RATES = frozenset(f.name for f in dataclasses.fields(Faults) if f.name.endswith("_rate"))
_NON_NEGATIVE = frozenset({"latency_ms", "jitter_ms", "quota_rps"})
FAULT_NAMES = tuple(f.name for f in dataclasses.fields(Faults))


def validate_fault(name: str, value: object) -> float | int | None:
    """Check one setting; returns it normalised or raises :class:`InvalidFault`."""
    if name not in FAULT_NAMES:
        raise InvalidFault(name, "unknown fault setting")
    if name == "retry_after_ms":
        return _validate_retry_after(value)
    number = _finite_number(name, value)
    if name in _RATES and not 0.0 <= number <= 1.0:
        raise InvalidFault(name, f"must be between 0 and 1, got {value}")
    if name in _NON_NEGATIVE and number < 0:
        raise InvalidFault(name, f"must not be negative, got {value}")
    if name == "hang_s" and not 0 < number <= MAX_HANG_S:
        raise InvalidFault(name, f"must be above 0 and at most {MAX_HANG_S:g}, got {value}")
    return number


def _finite_number(name: str, value: object) -> float:
    # bool is an int in Python, but "true" is never a meaningful rate or duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFault(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidFault(name, f"must be finite, got {value}")
    return float(value)


def _validate_retry_after(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidFault("retry_after_ms", f"must be a non-negative integer, got {value!r}")
    return value


class Fault(enum.Enum):
    """A fault the injector decided on for one request."""

    RESET = "reset"
    HANG = "hang"
    HTML = "html"
    QUOTA = "quota"
    THROTTLE = "throttle"
    ERROR_503 = "error_503"
    ERROR_500 = "error_500"
    TRUNCATED = "truncated"
    DROP = "drop"


class TokenBucket:
    """``rate_per_s`` tokens a second, holding one second's worth (the burst), at least one."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float]) -> None:
        self.rate_per_s = rate_per_s
        self._capacity = max(1.0, rate_per_s)  # a quota below 1/s still lets one through
        self._clock = clock
        self._tokens = self._capacity
        self._last_s = clock()

    def take(self) -> bool:
        """Take one token if there is one."""
        now_s = self._clock()
        elapsed_s = max(0.0, now_s - self._last_s)
        self._tokens = min(self._capacity, self._tokens + elapsed_s * self.rate_per_s)
        self._last_s = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FaultInjector:
    """Decides, request by request, which of the configured faults strike.

    ``injected`` counts every fault decided, by :class:`Fault` value, for the stats.
    """

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self.injected: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._clock = clock
        self._bucket: TokenBucket | None = None
        self._next_error_is_503 = True

    def _strikes(self, rate: float) -> bool:
        return rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate)

    def _record(self, fault: Fault) -> Fault:
        self.injected[fault.value] += 1
        return fault

    def delay_s(self) -> float:
        """Seconds to wait before handling the request (latency plus jitter)."""
        f = self.faults
        jitter_ms = self._rng.uniform(0.0, f.jitter_ms) if f.jitter_ms > 0 else 0.0
        return (f.latency_ms + jitter_ms) / 1000.0

    def transport_fault(self) -> Fault | None:
        """A fault that happens before the service sees the request, or ``None``."""
        f = self.faults
        for rate, fault in (
            (f.reset_rate, Fault.RESET),
            (f.hang_rate, Fault.HANG),
            (f.html_rate, Fault.HTML),
        ):
            if self._strikes(rate):
                return self._record(fault)
        return None

    def service_fault(self) -> Fault | None:
        """A refusal by the service after authentication (quota, throttling, 5xx), or ``None``."""
        f = self.faults
        if not self._quota_allows(f.quota_rps):
            return self._record(Fault.QUOTA)
        if self._strikes(f.throttle_rate):
            return self._record(Fault.THROTTLE)
        if self._strikes(f.error_rate):
            fault = Fault.ERROR_503 if self._next_error_is_503 else Fault.ERROR_500
            self._next_error_is_503 = not self._next_error_is_503
            return self._record(fault)
        return None

    def _quota_allows(self, quota_rps: float) -> bool:
        if quota_rps <= 0:
            self._bucket = None
            return True
        if self._bucket is None or self._bucket.rate_per_s != quota_rps:
            # A new quota starts with a full bucket, like a freshly configured limit.
            self._bucket = TokenBucket(quota_rps, self._clock)
        return self._bucket.take()

    def truncates(self) -> bool:
        """Whether this successful answer is cut short."""
        if self._strikes(self.faults.truncated_rate):
            self._record(Fault.TRUNCATED)
            return True
        return False

    def drops(self) -> bool:
        """Whether to lose one confirmation (asked once per pending number)."""
        if self._strikes(self.faults.drop_rate):
            self._record(Fault.DROP)
            return True
        return False

    def drop_decider(self) -> Callable[[], bool] | None:
        """``drops`` when drop faults are on, else ``None`` so the store skips the call."""
        return self.drops if self.faults.drop_rate > 0 else None
