"""Building the Redis client from settings: one bounded pool, reconnect with back-off."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.keys import Keys
from worker.settings import Settings

# XREADGROUP blocks for at most the intake's idle block (0.5 s) or a batch's linger
# (up to 60 s), so replies may legitimately take that long.
_SOCKET_TIMEOUT_S = 75.0


def make_redis(url: str, *, max_connections: int) -> Redis:
    """A client for ``url`` whose pool holds at most ``max_connections`` connections.

    Replies stay bytes: stream fields are untrusted input and are decoded deliberately.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=5,
        socket_timeout=_SOCKET_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis(connection_pool=pool)


def open_redis(settings: Settings, *, max_connections: int) -> Redis:
    """The Redis client every command uses, built from the settings."""
    return make_redis(settings.redis_url, max_connections=max_connections)


def keys_for(settings: Settings) -> Keys:
    """Key names for the settings' prefix (a hash tag in cluster mode)."""
    return Keys.for_prefix(settings.key_prefix, cluster=settings.redis_cluster)
