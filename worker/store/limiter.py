"""The fleet-wide rate limit: GCRA with an adaptive rate, in one Lua script on Redis's clock.

Every worker on the same Redis and prefix shares one hash, ``<prefix>:limiter``:

- ``tat``: the GCRA theoretical arrival time (µs, Redis clock). ``acquire`` reserves the next
  free slot and returns how long to sleep until it, so a worker sleeps exactly once per
  request and never polls Redis in a loop. With no burst tolerance, no second carries more
  than the rate.
- ``rate``: the effective rate (requests/s). A throttling answer cuts it multiplicatively
  (×0.7, at most once per second, since answers to requests already sent at the old rate say
  nothing new; never below 1/s) and remembers the rate it was cut from as ``ceiling``. While no
  throttling arrives it climbs back additively: 5% of the limit per second up to 90% of the
  ceiling, then only 0.5% of the ceiling per second until 5% above it (about 30 s), so a fleet
  whose real quota is below the limit settles just under the quota instead of bouncing off it.
- A throttling answer also pushes ``tat`` forward by ``x-acs-retry-after`` (or one interval):
  a pause every worker honours.

Tests pass ``now_us`` to move the script's clock instead of waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.clock import SYSTEM_CLOCK, Clock
from worker.logs import get_logger
from worker.store.connection import RedisClient, register_script

log = get_logger("limiter")

_SCRIPT = """
local key, op, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local s = redis.call('HMGET', key, 'tat', 'rate', 'ceiling', 'updated', 'last_cut')
local tat = tonumber(s[1]) or now
local rate = math.min(tonumber(s[2]) or limit, limit)
local ceiling = tonumber(s[3]) or 0
local updated = tonumber(s[4]) or now
local last_cut = tonumber(s[5]) or 0
local dt = math.max(0, now - updated) / 1000000
if rate < limit and dt > 0 then
  if rate < 0.9 * ceiling then
    -- Fast back to 90% of the rate that was throttled, then a slow probe from there.
    rate = math.min(0.9 * ceiling, rate + limit * 0.05 * dt)
  elseif rate <= 1.05 * ceiling then
    rate = rate + ceiling * 0.005 * dt
  else
    rate = rate + limit * 0.05 * dt
  end
  rate = math.min(limit, rate)
end
if op == 'throttled' then
  if now - last_cut >= 1000000 then
    ceiling = rate
    rate = math.max(1, rate * 0.7)
    last_cut = now
  end
  -- A retry-after hint pauses everyone: at most 300 s, whatever a caller passes.
  local pause = math.min(tonumber(ARGV[4]) or 0, 300000) * 1000
  if not (pause > 0) then pause = 1000000 / rate end
  tat = math.max(tat, now + pause)
elseif op == 'acquire' then
  tat = math.max(tat, now) + 1000000 / rate
end
redis.call('HSET', key, 'tat', string.format('%.0f', tat), 'rate', string.format('%.6f', rate),
  'ceiling', string.format('%.6f', ceiling), 'updated', string.format('%.0f', now),
  'last_cut', string.format('%.0f', last_cut))
redis.call('PEXPIRE', key, 3600000)
local wait = 0
if op == 'acquire' then wait = tat - 1000000 / rate - now end
return {string.format('%.0f', math.max(0, wait)), string.format('%.6f', rate),
  string.format('%.0f', math.max(0, tat - now))}
"""


@dataclass(frozen=True, slots=True)
class LimiterReply:
    """``wait_s``: sleep before sending; ``rate``: effective requests/s;
    ``horizon_s``: how far ahead the fleet's next free slot is."""

    wait_s: float
    rate: float
    horizon_s: float


def _reply(raw: Any) -> LimiterReply:
    wait_us, rate, horizon_us = (float(x) for x in raw)
    return LimiterReply(wait_us / 1e6, rate, horizon_us / 1e6)


class RateLimiter:
    """A client of the shared limiter; ``limit_rps`` is ``ACKWORKER_RATE_LIMIT``."""

    def __init__(
        self, redis: RedisClient, key: str, limit_rps: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._key = key
        self._limit = limit_rps
        self._clock = clock
        self._script = register_script(redis, _SCRIPT)
        self._logged_rate = limit_rps

    async def call(
        self, op: str, *, pause_ms: float = 0.0, now_us: int | None = None
    ) -> LimiterReply:
        """Run the script: ``op`` is ``acquire``, ``throttled`` or ``peek``."""
        args = [op, repr(self._limit), "" if now_us is None else str(now_us), repr(pause_ms)]
        reply = _reply(await self._script(keys=[self._key], args=args))
        self._note_rate(reply.rate)
        return reply

    async def acquire(self) -> float:
        """Reserve the next fleet-wide slot and sleep until it; returns seconds waited."""
        reply = await self.call("acquire")
        if reply.wait_s > 0:
            await self._clock.sleep(reply.wait_s)
        return reply.wait_s

    async def throttled(self, retry_after_s: float | None) -> LimiterReply:
        """Report a throttling answer: slows and pauses the whole fleet."""
        pause_ms = (retry_after_s or 0.0) * 1000.0
        reply = await self.call("throttled", pause_ms=pause_ms)
        log.warning(
            "limiter.throttled",
            effective_rate=round(reply.rate, 3),
            pause_s=round(reply.horizon_s, 3),
        )
        return reply

    def _note_rate(self, rate: float) -> None:
        # Log every change of 5% or more, so the effective rate can be followed in the logs.
        if abs(rate - self._logged_rate) >= 0.05 * self._logged_rate:
            log.info("limiter.rate_changed", effective_rate=round(rate, 3), limit=self._limit)
            self._logged_rate = rate
