"""Replay protection: each signature nonce is accepted once within the timestamp window.

The memory is bounded twice: entries older than the 15-minute window are forgotten (a
replay that old fails the timestamp check anyway), and past ``max_entries`` the oldest go
first, which trades perfect replay detection under extreme load for a fixed footprint.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

NONCE_TTL_S = 900.0
"""Nonces are remembered as long as a timestamp stays acceptable."""
MAX_NONCES = 250_000
"""Cap on remembered nonces (about 4 minutes at 1000 requests a second, ~40 MB)."""


class NonceCache:
    """Nonces seen in the last ``ttl_s`` seconds, at most ``max_entries`` of them."""

    def __init__(
        self,
        *,
        ttl_s: float = NONCE_TTL_S,
        max_entries: int = MAX_NONCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def add(self, nonce: str) -> bool:
        """Remember ``nonce``; False when it was already used."""
        now_s = self._clock()
        self._expire(now_s)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now_s
        if len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)
        return True

    def _expire(self, now_s: float) -> None:
        seen = self._seen
        while seen and now_s - next(iter(seen.values())) > self._ttl_s:
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
