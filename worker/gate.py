"""The send gate: closed while the API refuses this process's credentials or clock.

A fatal answer (``InvalidAccessKeyId*``, ``SignatureDoesNotMatch``, ``Forbidden*``,
``InvalidTimeStamp*``) is not the items' fault, so nothing is dead-lettered: the gate closes,
every sender waits in front of it, and one sender (the prober) retries its own request with
capped back-off, re-reading the credentials before each probe so that a fixed credentials file
is picked up without a restart. The first answer that is not fatal opens the gate.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from worker.clock import Clock
from worker.errors import ClockSkewError, ConfigError, FatalApiError
from worker.logs import get_logger
from worker.retry import RetryPolicy

log = get_logger("gate")


class SendGate:
    """Holds senders back while sending cannot work; one of them probes."""

    def __init__(
        self, policy: RetryPolicy, clock: Clock, reload_credentials: Callable[[], None]
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._reload = reload_credentials
        self._opened = anyio.Event()
        self._opened.set()
        self._prober = False
        self._probes = 0
        self.problem: str | None = None

    @property
    def is_open(self) -> bool:
        """True while sending is allowed."""
        return self._opened.is_set()

    async def wait_open(self) -> None:
        """Return once the gate is open."""
        await self._opened.wait()

    async def on_fatal(self, exc: FatalApiError) -> None:
        """Handle a fatal answer; returns when the caller should retry its request.

        The first caller becomes the prober: it waits the probe back-off and retries. Others
        wait until a probe succeeds.
        """
        if self.is_open:
            self._opened = anyio.Event()
            self._probes = 0
        self.problem = exc.code
        event = "api.clock_skew" if isinstance(exc, ClockSkewError) else "api.auth_failed"
        if self._prober:
            await self.wait_open()
            return
        self._prober = True
        try:
            self._probes += 1
            delay = self._policy.probe_delay_s(self._probes)
            log.error(
                event,
                code=exc.code,
                message=exc.message,
                request_id=exc.request_id,
                probe_in_s=delay,
            )
            await self._clock.sleep(delay)
            self._reload_credentials()
        finally:
            self._prober = False

    def on_answer(self) -> None:
        """A request got an answer that was not fatal: open the gate if closed."""
        if not self.is_open:
            log.info("api.sending_resumed", after_probes=self._probes, problem=self.problem)
            self.problem = None
            self._opened.set()

    def _reload_credentials(self) -> None:
        try:
            self._reload()
        except ConfigError as exc:
            # Keep probing with the credentials we have; the operator may still be editing.
            log.error("credentials.reload_failed", error=str(exc))
