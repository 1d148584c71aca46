"""The fleet's permission to send, per account: an adaptive rate limit and the outage pause,
in one Lua script on Redis's clock.

Every worker on the same Redis and prefix shares one hash, ``<prefix>:limiter[:<account>]``:

- ``tat``: the GCRA theoretical arrival time (µs, Redis clock). ``acquire`` reserves the next
  free slot and returns how long to sleep until it, so a worker sleeps exactly once per
  request and never polls Redis in a loop. With no burst tolerance, no second carries more
  than the rate.
- ``rate``: the effective rate (requests/s). A throttling answer cuts it multiplicatively
  (×0.7, at most once per second, since answers to requests already sent at the old rate say
  nothing new; never below 5% of the limit or 1/s, whichever is lower) and remembers the rate
  it was cut from as ``ceiling``. While no throttling arrives it climbs back additively: 5% of
  the limit per second up to 90% of the ceiling, then only 0.5% of the ceiling per second
  until 5% above it (about 30 s), so a fleet whose real quota is below the limit settles just
  under the quota instead of bouncing off it.
- A throttling answer also pushes ``tat`` forward by ``x-acs-retry-after`` (or one interval):
  a pause every worker honours.
- **The outage pause** (``down``, ``probe_at``, ``probes``, ``failing``, ``answered``). A
  request that finds the endpoint away (:attr:`~worker.errors.ApiError.endpoint_down`:
  refused, reset, timed out, 5xx, a 4xx without a ``Code``) is reported as ``unreachable``;
  an answer as ``answered`` (each process at most once a second while all is well). When
  failures have gone on for ``after_s`` with no answer anywhere in the fleet, the account is
  *down*: ``acquire`` hands out no slots, only one probe at a time, fleet-wide, after a
  back-off doubling from ``probe_base_s`` to ``probe_cap_s``. The answer to a probe (a
  request granted after the outage began; a late answer to an older request proves nothing)
  ends the pause for every worker. Entries wait in their streams meanwhile: nothing is
  dead-lettered because the endpoint was away.

Tests pass ``now_us`` to move the script's clock instead of waiting.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import ApiError, clip
from worker.logs import get_logger
from worker.store.connection import REDIS_ERRORS, RedisClient, register_script
from worker.store.outage import ANSWER_REPORT_S, DEFAULT_RULE, OutageRule, OutageView

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
local after, probe_base, probe_cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local s = redis.call('HMGET', key, 'tat', 'rate', 'ceiling', 'updated', 'last_cut', 'down',
  'probe_at', 'probes', 'failing', 'last_fail', 'answered')
local tat = tonumber(s[1]) or now
local rate = math.min(tonumber(s[2]) or limit, limit)
local ceiling = tonumber(s[3]) or 0
local updated = tonumber(s[4]) or now
local last_cut = tonumber(s[5]) or 0
local down, probe_at, probes = tonumber(s[6]) or 0, tonumber(s[7]) or 0, tonumber(s[8]) or 0
local failing, last_fail = tonumber(s[9]) or 0, tonumber(s[10]) or 0
local answered = tonumber(s[11]) or 0
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
local state, wait, down_for = 'up', 0, 0
if down > 0 then down_for = now - down end
if op == 'throttled' then
  if now - last_cut >= 1000000 then
    ceiling = rate
    -- The floor stays below the limit, however low the limit is.
    rate = math.max(math.min(1, limit * 0.05), rate * 0.7)
    last_cut = now
  end
  -- A retry-after hint pauses everyone: at most 300 s, whatever a caller passes.
  local pause = math.min(tonumber(ARGV[4]) or 0, 300000) * 1000
  if not (pause > 0) then pause = 1000000 / rate end
  tat = math.max(tat, now + pause)
elseif op == 'acquire' then
  if down > 0 and now < probe_at then
    -- The endpoint is away: nobody sends until the next probe is due.
    state, wait = 'paused', probe_at - now
  else
    if down > 0 then
      -- This caller's request is the fleet's one probe; the next is due after a back-off.
      state, probes = 'probe', probes + 1
      probe_at = now + math.min(probe_cap, probe_base * 2 ^ math.min(probes, 20))
    end
    tat = math.max(tat, now) + 1000000 / rate
    wait = tat - 1000000 / rate - now
  end
elseif op == 'answered' then
  answered, failing = now, 0
  -- Only a request sent during the outage (a probe) proves that the endpoint is back.
  if down > 0 and tonumber(ARGV[8]) >= down then
    state, down, probe_at = 'resumed', 0, 0
  end
elseif op == 'unreachable' then
  if down > 0 then
    state = 'down'
  else
    -- A failure long after the last one starts a new window: an hour-old reset says nothing.
    -- "Long" outlasts the longest retry back-off (30 s), so a batch's own retries never do.
    if failing == 0 or now - last_fail > math.max(after, 60000000) then failing = now end
    if now - failing >= after and answered < failing then
      state, down, probes, down_for = 'started', now, 0, 0
      probe_at = now + probe_base
    end
  end
  last_fail = now
end
if state ~= 'resumed' and down == 0 then probes = 0 end
redis.call('HSET', key, 'tat', string.format('%.0f', tat), 'rate', string.format('%.6f', rate),
  'ceiling', string.format('%.6f', ceiling), 'updated', string.format('%.0f', now),
  'last_cut', string.format('%.0f', last_cut), 'down', string.format('%.0f', down),
  'probe_at', string.format('%.0f', probe_at), 'probes', probes,
  'failing', string.format('%.0f', failing), 'last_fail', string.format('%.0f', last_fail),
  'answered', string.format('%.0f', answered))
redis.call('PEXPIRE', key, 3600000)
local answered_ago = -1
if answered > 0 then answered_ago = now - answered end
return {string.format('%.0f', math.max(0, wait)), string.format('%.6f', rate),
  string.format('%.0f', math.max(0, tat - now)), state, string.format('%.0f', now),
  string.format('%.0f', down_for), probes, string.format('%.0f', answered_ago)}
"""


@dataclass(frozen=True, slots=True)
class LimiterReply:
    """``wait_s``: sleep before sending; ``rate``: effective requests/s; ``horizon_s``: how far
    ahead the fleet's next free slot is; ``state``: ``up``, ``paused`` (no slot: the endpoint
    is away, ``wait_s`` until the next probe is due), ``probe`` (the slot is the fleet's
    probe), ``started``, ``down`` or ``resumed`` (answers to reports); ``now_us``: Redis's
    clock; ``down_s``: how long the outage has lasted; ``answered_ago_s``: since the fleet's
    last answer (None: never)."""

    wait_s: float
    rate: float
    horizon_s: float
    state: str = "up"
    now_us: int = 0
    down_s: float = 0.0
    probes: int = 0
    answered_ago_s: float | None = None


def _reply(raw: Any) -> LimiterReply:
    wait_us, rate, horizon_us, state, now_us, down_us, probes, ago_us = raw
    ago = float(ago_us)
    return LimiterReply(
        float(wait_us) / 1e6,
        float(rate),
        float(horizon_us) / 1e6,
        state.decode() if isinstance(state, bytes) else str(state),
        int(now_us),
        float(down_us) / 1e6,
        int(probes),
        None if ago < 0 else ago / 1e6,
    )


@dataclass(frozen=True, slots=True)
class Slot:
    """A granted send. ``waited_s``: for the rate; ``paused_s``: in an outage pause;
    ``granted_us``: Redis's clock at the grant; ``probe``: the fleet's one probe."""

    waited_s: float
    paused_s: float = 0.0
    granted_us: int = 0
    probe: bool = False


class RateLimiter:
    """A client of one account's shared limiter; ``limit_rps`` is its ``rate_limit``.

    :attr:`outage` is this process's view of the account's outage pause; ``held`` (entries
    the lane holds) goes into the pause's log events.
    """

    def __init__(
        self,
        redis: RedisClient,
        key: str,
        limit_rps: float,
        clock: Clock = SYSTEM_CLOCK,
        *,
        outage: OutageRule = DEFAULT_RULE,
        held: Sized = (),
    ) -> None:
        self._key = key
        self._limit = limit_rps
        self._clock = clock
        self._rule = outage
        self._script = register_script(redis, _SCRIPT)
        self._logged_rate = limit_rps
        self._reported_at: float | None = None
        self.outage = OutageView(clock, held)
        """What this process knows of the account's outage pause (a send gate's reading)."""

    async def call(
        self,
        op: str,
        *,
        pause_ms: float = 0.0,
        now_us: int | None = None,
        sent_us: int = 0,
    ) -> LimiterReply:
        """Run the script: ``op`` is ``acquire``, ``throttled``, ``answered``,
        ``unreachable`` or ``peek``."""
        o = self._rule
        args = [
            op,
            repr(self._limit),
            "" if now_us is None else str(now_us),
            repr(pause_ms),
            str(round(o.after_s * 1e6)),
            str(round(o.probe_base_s * 1e6)),
            str(round(o.probe_cap_s * 1e6)),
            str(sent_us),
        ]
        reply = _reply(await self._script(keys=[self._key], args=args))
        self._note_rate(reply.rate)
        return reply

    async def acquire(self) -> Slot:
        """Wait for the next fleet-wide slot (through an outage pause, however long)."""
        paused_s = 0.0
        while True:
            reply = await self.call("acquire")
            if reply.state != "paused":
                break
            self.outage.paused(reply.down_s)
            # Woken at the probe's due time, or after probe_base_s, whichever comes first: a
            # pause ended by another worker's probe is seen within seconds.
            delay = max(0.01, min(reply.wait_s, self._rule.probe_base_s))
            await self._clock.sleep(delay)
            paused_s += delay
        if reply.state == "probe":
            self.outage.paused(reply.down_s)
            log.info("api.probe", probe=reply.probes, outage_s=round(reply.down_s, 1))
        else:
            self.outage.resumed()
        if reply.wait_s > 0:
            await self._clock.sleep(reply.wait_s)
        return Slot(reply.wait_s, paused_s, reply.now_us, reply.state == "probe")

    async def answered(self, slot: Slot) -> None:
        """The request sent in ``slot`` got an answer: the endpoint is there. Reported to the
        fleet when it may end a pause, else at most every :data:`ANSWER_REPORT_S`."""
        now = self._clock.monotonic()
        self.outage.answered_at = now
        due = self._reported_at is None or now - self._reported_at >= ANSWER_REPORT_S
        if not (slot.probe or not self.outage.is_open or due):
            return
        self._reported_at = now
        reply = await self._report("answered", sent_us=slot.granted_us)
        if reply is not None and reply.state == "resumed":
            log.info(
                "api.outage_ended",
                outage_s=round(reply.down_s, 1),
                probes=reply.probes,
                held=self.outage.held,
            )
            self.outage.resumed()

    async def unreachable(self, exc: ApiError) -> None:
        """A request found the endpoint away (``exc``); pauses the fleet when nothing has
        answered for ``after_s``."""
        reply = await self._report("unreachable")
        if reply is None:
            return
        if reply.answered_ago_s is not None:
            self.outage.heard_of_answer(reply.answered_ago_s)
        if reply.state == "started":
            log.error(
                "api.outage_started",
                code=exc.code,
                error=exc.summary(),
                after_s=self._rule.after_s,
                held=self.outage.held,
            )
        if reply.state in ("started", "down"):
            self.outage.paused(reply.down_s)

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

    async def _report(self, op: str, *, sent_us: int = 0) -> LimiterReply | None:
        # A report is advice: losing one to a Redis failure must not lose the API's answer.
        try:
            return await self.call(op, sent_us=sent_us)
        except REDIS_ERRORS as exc:
            log.warning("limiter.report_failed", op=op, error=clip(str(exc)))
            return None

    def _note_rate(self, rate: float) -> None:
        # Log every change of 5% or more, so the effective rate can be followed in the logs.
        if abs(rate - self._logged_rate) >= 0.05 * self._logged_rate:
            log.info("limiter.rate_changed", effective_rate=round(rate, 3), limit=self._limit)
            self._logged_rate = rate
