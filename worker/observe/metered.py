"""Counting at the seams: the API client and the rate limiter, wrapped to feed :class:`Totals`.

The runner hands the processor these instead of the bare client and limiter, so request
latency, requests in flight, rate-limit waits, fleet pauses and the effective rate are
counted without a line in the processor's hot path. Each costs a few additions per request.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

from worker.api.client import Acknowledger, AckResult
from worker.clock import Clock
from worker.entries import DEFAULT_ACCOUNT
from worker.store.connection import RedisClient
from worker.store.limiter import LimiterReply, RateLimiter, Slot
from worker.store.outage import DEFAULT_RULE, OutageRule
from worker.totals import Totals


class MeteredClient:
    """An :class:`Acknowledger` that counts requests in flight and times each one."""

    def __init__(self, client: Acknowledger, totals: Totals, clock: Clock) -> None:
        self._client = client
        self._totals = totals
        self._clock = clock

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        """Call the wrapped client; an error answer is timed like any other."""
        totals = self._totals
        started = self._clock.monotonic()
        totals.in_flight += 1
        try:
            return await self._client.acknowledge(ids)
        finally:
            totals.in_flight -= 1
            totals.latency.observe(self._clock.monotonic() - started)


class MeteredLimiter(RateLimiter):
    """A :class:`RateLimiter` that records its waits, pauses and the rate it answers."""

    def __init__(
        self,
        redis: RedisClient,
        key: str,
        limit_rps: float,
        clock: Clock,
        *,
        totals: Totals,
        account: str = DEFAULT_ACCOUNT,
        outage: OutageRule = DEFAULT_RULE,
        held: Sized = (),
    ) -> None:
        super().__init__(redis, key, limit_rps, clock, outage=outage, held=held)
        self._totals = totals
        self._account = account
        self._note(limit_rps)  # until the shared limiter first answers

    def _note(self, rate: float) -> None:
        self._totals.account_rates[self._account] = rate

    async def call(
        self, op: str, *, pause_ms: float = 0.0, now_us: int | None = None, sent_us: int = 0
    ) -> LimiterReply:
        """Run the script and remember the effective rate it answered."""
        reply = await super().call(op, pause_ms=pause_ms, now_us=now_us, sent_us=sent_us)
        self._note(reply.rate)
        return reply

    async def acquire(self, *, probe: bool = True) -> Slot:
        """Reserve a slot; add the seconds waited for it to the totals."""
        slot = await super().acquire(probe=probe)
        self._totals.rate_wait_s += slot.waited_s
        self._totals.outage_wait_s += slot.paused_s
        self._totals.probes += slot.probe
        return slot

    async def throttled(self, retry_after_s: float | None) -> LimiterReply:
        """Report a throttling answer; count the fleet pause it causes."""
        reply = await super().throttled(retry_after_s)
        self._totals.fleet_pauses += 1
        return reply
