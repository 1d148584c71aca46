"""Retries and back-off: the API retry policy and helper, the credentials probe, and Redis.

Declarative and bounded (attempts, cap), honouring the server's ``x-acs-retry-after``.
Tests pass a policy with tiny delays instead of waiting.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from worker.clock import Clock
from worker.errors import ApiError, ThrottledError

REDIS_BACKOFF_FIRST_S = 0.2
REDIS_BACKOFF_CAP_S = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` per batch; delays in seconds.

    Retry ``n`` (1-based) waits a uniform random time in ``[0, min(cap_s, base_s * 2**(n-1))]``
    (full jitter spreads a fleet's retries), but never less than the server's retry-after.
    After a fatal answer (credentials, clock), probes wait ``probe_base_s`` doubling up to
    ``probe_cap_s``: at most one request per ``probe_cap_s`` while the problem lasts; so do the
    fleet's probes of an endpoint that has not answered for ``outage_after_s``. A batch gives
    up after ``max_attempts`` and ``budget_s`` of failing while the API answers others
    (:class:`RetryBudget`).
    """

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    probe_base_s: float = 5.0
    probe_cap_s: float = 30.0
    budget_s: float = 300.0
    outage_after_s: float = 10.0

    def delay_s(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry``."""
        # The exponent is capped: with a time budget a retry count has no bound of its own.
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(max(0, retry - 1), 30))
        return max(rng.uniform(0.0, ceiling), retry_after_s or 0.0)

    def probe_delay_s(self, probe: int) -> float:
        """Seconds to wait before credentials probe number ``probe`` (1-based)."""
        return min(self.probe_cap_s, self.probe_base_s * 2.0 ** min(max(0, probe - 1), 30))


def redis_backoff_s(failures: int, cap_s: float = REDIS_BACKOFF_CAP_S) -> float:
    """Seconds to wait after ``failures`` Redis failures in a row (1-based): doubling from
    :data:`REDIS_BACKOFF_FIRST_S` up to ``cap_s``. Every loop that waits for Redis uses it."""
    return min(cap_s, REDIS_BACKOFF_FIRST_S * 2.0 ** min(max(0, failures - 1), 16))


class ApiRetry:
    """The retries of one API call: classify each failure, count it, back off, or give up.

    ``failed`` says whether to try again (the error is retryable and attempts are left) and
    reports throttling to ``throttled`` (the limiter, which slows the fleet); ``back_off``
    logs ``event`` with the caller's fields and returns the seconds to wait, never less than
    the server's retry-after. The processor, the poller and the verifier all retry with it.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random,
        *,
        log: FilteringBoundLogger,
        event: str,
        throttled: Callable[[float | None], Awaitable[object]] | None = None,
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._log = log
        self._event = event
        self._throttled = throttled
        self.failures = 0
        """Failed attempts so far."""

    async def failed(self, exc: ApiError) -> bool:
        """Count ``exc``; True when the call should be tried again."""
        self.failures += 1
        if isinstance(exc, ThrottledError) and self._throttled is not None:
            await self._throttled(exc.retry_after_s)
        return exc.retryable and self.failures < self._policy.max_attempts

    def back_off(self, exc: ApiError, **fields: object) -> float:
        """Log the retry (``fields`` first) and return the seconds to wait before it."""
        delay = self._policy.delay_s(self.failures, exc.retry_after_s, self._rng)
        self._log.warning(
            self._event,
            **fields,
            code=exc.code,
            error=exc.summary(),
            attempt=self.failures,
            delay_s=round(delay, 3),
        )
        return delay


class Availability(Protocol):
    """What a :class:`RetryBudget` reads of the endpoint (monotonic seconds, None: never)."""

    @property
    def is_open(self) -> bool:
        """False while the account is paused because the endpoint is away."""
        ...

    @property
    def answered_sent_s(self) -> float | None:
        """When the latest request that got an answer was sent."""
        ...

    @property
    def resumed_at_s(self) -> float | None:
        """When the last outage pause ended."""
        ...


class RetryBudget:
    """How long one batch may keep failing, in seconds, while the API answers others.

    The clock starts at the batch's first failure, or when the last outage pause ended if
    that is later. It is spent only once ``budget_s`` have passed *and* a request sent after
    the first failure got an answer (a late answer to an older request proves nothing), and
    never while the account is paused: while nothing answers, the endpoint is away and the
    batch is not at fault. Throttling never spends it (it is the fleet's, not the batch's).
    """

    def __init__(self, budget_s: float, clock: Clock, endpoint: Availability) -> None:
        self._budget_s = budget_s
        self._clock = clock
        self._endpoint = endpoint
        self._first_s: float | None = None

    def spent(self, exc: ApiError) -> bool:
        """Record the failure ``exc``; True when the batch may be given up."""
        now = self._clock.monotonic()
        if self._first_s is None:
            self._first_s = now
        if isinstance(exc, ThrottledError) or not self._endpoint.is_open:
            return False
        answered = self._endpoint.answered_sent_s
        if answered is None or answered <= self._first_s:
            return False
        start = max(self._first_s, self._endpoint.resumed_at_s or self._first_s)
        return now - start >= self._budget_s
