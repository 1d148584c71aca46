"""Stopping a long-running command in two phases, and the signals that ask for it.

The first SIGTERM or SIGINT asks a process to drain (stop taking work, finish what is in
hand); a second one, or the end of a grace period, stops it at once. :class:`TwoPhaseStop`
holds that state for ``ackworker run`` and ``ackworker poll`` alike, and
:func:`serve_until_signalled` runs one of them with the signals wired to it.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from structlog.typing import FilteringBoundLogger

T = TypeVar("T")


class TwoPhaseStop:
    """``stopping`` is set by the first request (drain); ``hard`` is cancelled by the second
    (stop now). The owner runs its work inside ``hard`` and watches ``stopping``."""

    def __init__(self) -> None:
        self.stopping = anyio.Event()
        self.hard = anyio.CancelScope()

    @property
    def is_stopping(self) -> bool:
        """True once a stop was requested."""
        return self.stopping.is_set()

    def request(self) -> bool:
        """Ask to stop: True for the first request (drain), False for a later one (which
        cancels ``hard``)."""
        if not self.stopping.is_set():
            self.stopping.set()
            return True
        self.hard.cancel()
        return False


async def serve_until_signalled(
    run: Callable[[], Awaitable[T]],
    request_stop: Callable[[], None],
    *,
    log: FilteringBoundLogger,
    event: str,
) -> T:
    """Await ``run()`` while SIGTERM and SIGINT call ``request_stop`` (each logged to ``log``
    as ``event`` with the signal's name); the result of ``run()``."""

    async def watch() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info(event, signal=signal.Signals(signum).name)
                request_stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        result = await run()
        tg.cancel_scope.cancel()
    return result
