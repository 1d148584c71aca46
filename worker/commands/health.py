"""``ackworker health``: exit 0 when this host's worker beats, 1 otherwise; one line.

Reads the heartbeats (:mod:`worker.store.heartbeat`) and looks for the consumer set
explicitly, else any worker on this host.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio

from worker.commands.common import run_with_redis
from worker.config.settings import Settings
from worker.store.connection import RedisClient
from worker.store.heartbeat import Beat, read_beats
from worker.store.keys import Keys

HEALTH_TIMEOUT_S = 5.0  # below the probe timeouts of deploy/ (Docker, Kubernetes)


def _wanted(settings: Settings) -> tuple[Callable[[Beat], bool], str]:
    """Whose heartbeat ``health`` looks for: the consumer set explicitly, else this host's."""
    if settings.sources.get("consumer", "default") != "default":
        return (lambda b: b.consumer == settings.consumer), f"consumer {settings.consumer!r}"
    host = socket.gethostname()
    return (lambda b: b.host == host), f"host {host!r}"


async def check_health(redis: RedisClient, keys: Keys, settings: Settings) -> tuple[bool, str]:
    """True and a summary when a wanted heartbeat is fresh; False and why not otherwise."""
    wanted, what = _wanted(settings)
    matches = [b for b in await read_beats(redis, keys) if wanted(b)]
    if not matches:
        return False, f"unhealthy: no fresh heartbeat for {what} under prefix {keys.prefix!r}"
    beat = min(matches, key=lambda b: b.age_ms)
    line = f"ok: {beat.consumer} on {beat.host}, heartbeat {beat.age_ms / 1000:.1f}s ago"
    if beat.paused:
        # Alive all the same: a restart would not fix refused credentials.
        line += f", sending paused ({beat.paused})"
    return True, line


def health_command(settings: Settings) -> int:
    """``ackworker health``: exit 0 when this host's worker beats, 1 otherwise; one line."""

    async def main(redis: RedisClient, keys: Keys) -> int:
        try:
            with anyio.fail_after(HEALTH_TIMEOUT_S):
                healthy, line = await check_health(redis, keys, settings)
        except TimeoutError:
            healthy, line = False, f"unhealthy: no answer from Redis within {HEALTH_TIMEOUT_S}s"
        print(line)
        return 0 if healthy else 1

    return run_with_redis(settings, main)
