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
from worker.store.limiter_lua import SCRIPT
from worker.store.outage import ANSWER_REPORT_S, DEFAULT_RULE, OutageRule, OutageView

log = get_logger("limiter")


@dataclass(frozen=True, slots=True)
class LimiterReply:
    """``wait_s``: sleep before sending; ``rate``: effective requests/s; ``horizon_s``: how far
    ahead the fleet's next free slot is; ``state``: ``up``, ``paused`` (no slot: the endpoint
    is away, ``wait_s`` until the next probe is due), ``probe`` (the slot is the fleet's
    probe), ``started``, ``down`` or ``resumed`` (answers to reports); ``now_us``: Redis's
    clock; ``down_s``: how long the outage has lasted."""

    wait_s: float
    rate: float
    horizon_s: float
    state: str = "up"
    now_us: int = 0
    down_s: float = 0.0
    probes: int = 0


def _reply(raw: Any) -> LimiterReply:
    wait_us, rate, horizon_us, state, now_us, down_us, probes = raw
    return LimiterReply(
        float(wait_us) / 1e6,
        float(rate),
        float(horizon_us) / 1e6,
        state.decode() if isinstance(state, bytes) else str(state),
        int(now_us),
        float(down_us) / 1e6,
        int(probes),
    )


@dataclass(frozen=True, slots=True)
class Slot:
    """A granted send. ``waited_s``: for the rate; ``paused_s``: in an outage pause;
    ``granted_us``: Redis's clock at the grant (µs); ``probe``: the fleet's one probe."""

    waited_s: float
    paused_s: float = 0.0
    granted_us: int = 0
    probe: bool = False
    granted_s: float = 0.0
    """This process's monotonic clock at the grant."""


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
        self._script = register_script(redis, SCRIPT)
        self._logged_rate = limit_rps
        self._reported_at_s: float | None = None
        # After a failure the next answer is reported at once, to clear the fleet's window.
        self._failed_since_report = False
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
        """Run the script: ``op`` is ``acquire``, ``wait`` (``acquire`` that never takes the
        probe), ``throttled``, ``answered``, ``unreachable`` or ``peek``."""
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

    async def acquire(self, *, probe: bool = True) -> Slot:
        """Wait for the next fleet-wide slot (through an outage pause, however long).

        ``probe``: the slot may be the fleet's probe while the account is paused; a caller
        that does not report its outcome (:meth:`answered`, :meth:`unreachable`) passes False.
        """
        op, paused_s = ("acquire" if probe else "wait"), 0.0
        while True:
            reply = await self.call(op)
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
        granted_s = self._clock.monotonic()
        return Slot(reply.wait_s, paused_s, reply.now_us, reply.state == "probe", granted_s)

    async def answered(self, slot: Slot) -> None:
        """The request sent in ``slot`` got an answer: the endpoint is there. Reported to the
        fleet when it may end a pause or follows a failure, else at most every
        :data:`ANSWER_REPORT_S`."""
        now = self._clock.monotonic()
        self.outage.answered(slot.granted_s)
        last = self._reported_at_s
        due = last is None or now - last >= ANSWER_REPORT_S or self._failed_since_report
        if not (slot.probe or not self.outage.is_open or due):
            return
        self._reported_at_s, self._failed_since_report = now, False
        reply = await self._report("answered", sent_us=slot.granted_us)
        if reply is not None and reply.state == "resumed":
            log.info(
                "api.outage_ended",
                outage_s=round(reply.down_s, 1),
                probes=reply.probes,
                held=self.outage.held,
            )
            self.outage.resumed()

    async def watch(self) -> None:
        """While this process holds the account paused, look every ``probe_base_s`` whether
        the pause has ended elsewhere, so an idle lane does not stay paused (``/readyz``,
        the heartbeat) after the fleet resumed. Runs until cancelled."""
        while True:
            await self._clock.sleep(self._rule.probe_base_s)
            if self.outage.is_open:
                continue
            reply = await self._report("peek")
            if reply is not None and reply.state != "paused":
                self.outage.resumed()

    async def unreachable(self, exc: ApiError) -> None:
        """A request found the endpoint away (``exc``); pauses the fleet when nothing has
        answered for ``after_s``."""
        self._failed_since_report = True
        reply = await self._report("unreachable")
        if reply is None:
            return
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
