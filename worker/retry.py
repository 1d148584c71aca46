"""Retry timing: bounded exponential back-off with full jitter, and the credentials probe.

Declarative and bounded (attempts, cap), honouring the server's ``x-acs-retry-after``.
Tests pass a policy with tiny delays instead of waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` per batch; delays in seconds.

    Retry ``n`` (1-based) waits a uniform random time in ``[0, min(cap_s, base_s * 2**(n-1))]``
    (full jitter spreads a fleet's retries), but never less than the server's retry-after.
    After a fatal answer (credentials, clock), probes wait ``probe_base_s`` doubling up to
    ``probe_cap_s``: at most one request per ``probe_cap_s`` while the problem lasts.
    """

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    probe_base_s: float = 5.0
    probe_cap_s: float = 30.0

    def delay_s(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry``."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, retry - 1))
        return max(rng.uniform(0.0, ceiling), retry_after_s or 0.0)

    def probe_delay_s(self, probe: int) -> float:
        """Seconds to wait before credentials probe number ``probe`` (1-based)."""
        return min(self.probe_cap_s, self.probe_base_s * 2.0 ** max(0, probe - 1))
