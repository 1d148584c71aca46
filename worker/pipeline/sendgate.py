"""The send gate: closed while the API refuses this process's credentials or clock.

A fatal answer (``InvalidAccessKeyId*``, ``SignatureDoesNotMatch``, ``Forbidden*``,
``InvalidTimeStamp*``) is not the items' fault, so nothing is dead-lettered: the gate closes
and every sender waits in front of it, except one, the prober, which retries its own request
after a capped back-off, re-reading the credentials first so that a fixed credentials file is
picked up without a restart. The first answer that is not fatal to a request sent while the
gate was closed opens it: a late answer to a request sent before it closed proves nothing
about the credentials, so requests carry the gate's :attr:`~SendGate.epoch` from when they
were sent.

If the prober goes away (its batch ended), a waiting sender takes over the probing after at
most ``probe_cap_s``, so the gate can never be left closed with nobody probing.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from worker.clock import Clock
from worker.errors import FatalApiError
from worker.logs import get_logger
from worker.retry import RetryPolicy

log = get_logger("gate")


class SendGate:
    """Holds senders back while sending cannot work. Senders identify themselves by a token.

    ``reload_credentials`` is called before each probe and must not raise (see
    :func:`~worker.pipeline.clients.credential_reloader`, which logs a failed read instead).
    """

    def __init__(
        self, policy: RetryPolicy, clock: Clock, reload_credentials: Callable[[], None]
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._reload = reload_credentials
        self._opened = anyio.Event()
        self._opened.set()
        self._prober: object | None = None
        self._probes = 0
        self.problem: str | None = None
        self.epoch = 0
        """Counts closings: a request sent in an earlier epoch cannot open the gate."""

    @property
    def is_open(self) -> bool:
        """True while sending is allowed."""
        return self._opened.is_set()

    async def wait_turn(self, token: object) -> None:
        """Return when ``token`` may send: the gate is open, or it is the prober's turn."""
        while not self.is_open:
            if self._prober is None or self._prober is token:
                self._prober = token
                await self._probe_pause()
                return
            with anyio.move_on_after(self._policy.probe_cap_s):
                await self._opened.wait()

    def on_fatal(self, exc: FatalApiError, token: object) -> None:
        """A request got a fatal answer: close the gate (nothing is dead-lettered)."""
        if self.is_open:
            self._opened = anyio.Event()
            self._probes = 0
            self.epoch += 1
        if self._prober is None:
            self._prober = token
        self.problem = exc.code
        log.error(
            exc.event,
            code=exc.code,
            message=exc.message,
            request_id=exc.request_id,
            probe_in_s=self._policy.probe_delay_s(self._probes + 1),
        )

    def on_answer(self, epoch: int) -> None:
        """The API answered a request sent in ``epoch`` without a fatal error: open the gate
        if it was closed before that request went out."""
        if not self.is_open and epoch == self.epoch:
            log.info("api.sending_resumed", after_probes=self._probes, problem=self.problem)
            self.problem = None
            self._prober = None
            self._opened.set()

    def release(self, token: object) -> None:
        """``token`` stops sending; if it was probing, another sender takes over."""
        if self._prober is token:
            self._prober = None

    async def _probe_pause(self) -> None:
        self._probes += 1
        await self._clock.sleep(self._policy.probe_delay_s(self._probes))
        self._reload()  # a source that cannot be read keeps the credentials in use
