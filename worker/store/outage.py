"""One account's outage pause as this process sees it (the fleet's state is in the limiter).

:class:`~worker.store.limiter.RateLimiter` keeps the pause in Redis, shared by the fleet;
this is the local reading of it, kept up to date by the limiter's replies: whether this
process is holding back (read like a send gate: ``is_open``, ``problem``), since when, and
when an answer was last heard. It logs ``api.outage_paused`` when this process first learns
of a pause and ``api.outage_resumed`` when it sees sending work again, with the outage's
duration and the entries the lane holds meanwhile.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from worker.clock import Clock
from worker.logs import get_logger

log = get_logger("limiter")

ANSWER_REPORT_S = 1.0
"""While all is well a process reports answers at most this often: enough to keep a peer's
failures from pausing the fleet (``after_s`` is far longer), at a Redis call a second."""

PROBLEM = "endpoint_unreachable"
"""What ``problem`` says while paused (``status``, ``/readyz``, the heartbeat)."""


@dataclass(frozen=True, slots=True)
class OutageRule:
    """When the endpoint counts as away, and how often it is probed then (seconds)."""

    after_s: float = 10.0
    """Failures with no answer anywhere in the fleet for this long pause the account."""
    probe_base_s: float = 5.0
    """The first probe waits this long; each next one twice as long, up to ``probe_cap_s``."""
    probe_cap_s: float = 30.0
    """Longest wait between probes: at most 60 / ``probe_cap_s`` probes a minute, fleet-wide."""


DEFAULT_RULE = OutageRule()


class OutageView:
    """This process's view of one account's outage pause; times are monotonic seconds."""

    def __init__(self, clock: Clock, held: Sized = ()) -> None:
        self._clock = clock
        self._held = held
        self._paused_at_s: float | None = None
        self.answered_sent_s: float | None = None
        """When the latest request of this process that got an answer was sent."""
        self.resumed_at_s: float | None = None
        """When this process last saw an outage end."""

    @property
    def is_open(self) -> bool:
        """False while this process knows the account to be paused for an outage."""
        return self._paused_at_s is None

    @property
    def problem(self) -> str | None:
        """:data:`PROBLEM` while paused, else None."""
        return None if self._paused_at_s is None else PROBLEM

    @property
    def held(self) -> int:
        """Entries the lane holds (they wait in the stream's pending list meanwhile)."""
        return len(self._held)

    def answered(self, sent_s: float) -> None:
        """A request sent at ``sent_s`` (monotonic) got an answer."""
        self.answered_sent_s = max(self.answered_sent_s or sent_s, sent_s)

    def paused(self, outage_s: float) -> None:
        """The account is paused; the outage began ``outage_s`` seconds ago."""
        if self._paused_at_s is None:
            self._paused_at_s = self._clock.monotonic() - outage_s
            log.warning("api.outage_paused", outage_s=round(outage_s, 1), held=self.held)

    def resumed(self) -> None:
        """Sending works again (a slot was granted, or this process's probe got through)."""
        if self._paused_at_s is None:
            return
        now = self._clock.monotonic()
        outage_s = round(now - self._paused_at_s, 1)
        log.info("api.outage_resumed", outage_s=outage_s, held=self.held)
        self._paused_at_s = None
        self.resumed_at_s = now
