"""The one clock everything reads, so tests can move time instead of waiting for it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

import anyio


class Clock(Protocol):
    """Wall time for timestamps, monotonic time for intervals, and sleeping."""

    def now(self) -> datetime:
        """Current UTC wall time (aware)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def iso_utc(moment: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ssZ``, the form the API signs and dead letters carry."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
