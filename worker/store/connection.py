"""Building the Redis client for a :class:`RedisTarget`: one server, through Sentinel, or a Cluster.

- **One server** (``redis://``, ``rediss://``, ``unix://``): a bounded, blocking pool; a command
  that fails to connect or times out is retried three times with jittered back-off.
- **Sentinel** (``redis_sentinels`` set): every new connection asks the Sentinels where the
  primary named ``redis_sentinel_master`` is, so after a failover the next connection goes to
  the new primary; a connection still on a demoted primary fails (``ReadOnlyError`` becomes a
  connection error) and is retried. The URL gives the primary's user, password, database and
  TLS; its host and port are not used. The Sentinels are asked without a password or TLS.
- **Cluster** (``redis_cluster``): the URL names any node; the client learns the slot map
  from it. :func:`worker.config.topology.keys_for` wraps the key prefix in a ``{hash tag}``
  so that every key of a prefix is in one slot, which is what lets the Lua scripts touch
  several of them. While no node answers, or a slot has no primary, commands raise
  :class:`ClusterUnavailableError`, a connection error: the worker waits and retries as it
  does for one server.

``rediss://`` verifies the server's certificate and host name, against ``redis_ca_file`` when
set, else the system's CAs. A user and password come from the URL only and are never put in
a message here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RedisClient: TypeAlias = Redis | RedisCluster

# Any error Redis answers with (unreachable, out of memory, read-only replica, a group lost
# with a restart) is something to wait out and log, never a reason to stop the worker.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
"""What :func:`connect` returns. Both run every command ackworker sends, scripts included."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is and how to reach it (validated by :mod:`worker.config.topology`).

    ``sentinels`` is ``host:port,host:port`` and ``sentinel_master`` the primary's name;
    ``ca_file`` the CA bundle for ``rediss://``; ``cluster`` a Redis Cluster seeded by ``url``.
    """

    url: str
    cluster: bool = False
    sentinels: str | None = None
    sentinel_master: str = "mymaster"
    ca_file: str | None = None


class ClusterUnavailableError(RedisConnectionError):
    """The cluster cannot serve a command for now: no node answers, or a slot has no primary
    (``CLUSTERDOWN``, ``TRYAGAIN``). A connection error, so callers wait and retry."""


# XREADGROUP blocks for at most the intake's idle block (0.5 s) or a batch's linger
# (up to 60 s), so replies may legitimately take that long.
_SOCKET_TIMEOUT_S = 75.0
_CONNECT_TIMEOUT_S = 5.0
_POOL_WAIT_S = 30
_SENTINEL_TIMEOUT_S = 5.0


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=3)


def _socket_options() -> dict[str, Any]:
    return {
        "socket_connect_timeout": _CONNECT_TIMEOUT_S,
        "socket_timeout": _SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


def _tls_options(ca_file: str | None) -> dict[str, Any]:
    # redis-py's defaults are the same today; spelled out so that no upgrade loosens them.
    return {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": ca_file}


def make_redis(url: str, *, max_connections: int, ca_file: str | None = None) -> Redis:
    """A client for one server at ``url`` whose pool holds at most ``max_connections``
    connections; a caller past that waits up to 30 s for one to come back.

    Replies stay bytes: stream fields are untrusted input and are decoded deliberately.
    """
    tls = _is_tls(url)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=_POOL_WAIT_S,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **_socket_options(),
        **(_tls_options(ca_file) if tls else {}),
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


def connect(target: RedisTarget, *, max_connections: int) -> RedisClient:
    """The Redis client every command uses, for ``target``.

    ``max_connections`` bounds the pool of one server or of the Sentinels' primary.
    """
    if target.cluster:
        return _cluster(target)
    if target.sentinels:
        return _through_sentinel(target, max_connections)
    return make_redis(target.url, max_connections=max_connections, ca_file=target.ca_file)


def register_script(redis: RedisClient, source: str) -> AsyncScript:
    """``redis.register_script(source)`` for either kind of client.

    redis-py annotates ``register_script`` for :class:`Redis` only, but a
    :class:`RedisCluster` runs the same script object: EVALSHA goes to the node that owns
    the keys' slot, and a NOSCRIPT answer loads the script there and calls again.
    """
    if isinstance(redis, RedisCluster):
        return AsyncScript(redis, source)  # type: ignore[arg-type]  # see the docstring
    return redis.register_script(source)


_TIME = """
local t = redis.call('TIME')
return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
"""


async def redis_now_ms(redis: RedisClient, key: str) -> int:
    """Redis's clock in ms on the node that holds ``key``: stream ids and the limiter are
    stamped with it, so commands compare with it (in a cluster, each node has its own)."""
    reply: Any = await register_script(redis, _TIME)(keys=[key])
    return int(reply)


# --- Topologies ----------------------------------------------------------------------------


def _is_tls(url: str) -> bool:
    return url.startswith("rediss://")


class _Cluster(RedisCluster):
    """A RedisCluster whose "not available right now" failures are connection errors.

    redis-py raises a bare ``RedisClusterException`` when no node answers while it learns the
    slot map, and ``ClusterDownError`` or ``TryAgainError`` once its own retries are spent;
    the worker treats none of those as "Redis is down, wait". This class re-raises them as
    :class:`ClusterUnavailableError`, so start-up waits for the cluster and a running worker
    rides out an outage as it does on one server.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeds = dict(self.nodes_manager.startup_nodes)

    async def initialize(self) -> RedisCluster:
        startup = self.nodes_manager.startup_nodes
        if not startup:
            # redis-py drops a node from its seeds whenever a command to it fails; once an
            # outage has dropped them all, the client could never learn the slot map again.
            startup.update(self._seeds)
        try:
            return await super().initialize()
        except RedisClusterException as exc:
            if isinstance(exc.__cause__, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise ClusterUnavailableError(str(exc)) from exc
            raise

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (ClusterDownError, TryAgainError, SlotNotCoveredError) as exc:
            raise ClusterUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        except (AttributeError, TypeError) as exc:
            # redis-py issue 4287: writing on a connection its node closed (a node restarting)
            # can leak the transport's torn-down internals ('NoneType' object has no
            # attribute 'writelines') instead of ConnectionError. It is a lost connection.
            if "NoneType" not in str(exc):
                raise
            raise ClusterUnavailableError(f"connection lost: {exc}") from exc


def _cluster(target: RedisTarget) -> RedisCluster:
    tls = _is_tls(target.url)
    # No max_connections here: redis-py 6 strands a per-node pool slot on every failed
    # connect (redis-py issue 4110), so a bound would lock the client out of a node for
    # good after enough failures during an outage. The stranded objects hold no socket;
    # open connections stay bounded by the worker's own concurrency.
    return _Cluster.from_url(
        target.url,
        retry=_retry(),
        **_socket_options(),
        **(_tls_options(target.ca_file) if tls else {}),
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel pool (connections find the primary through the Sentinels) with the
    blocking pool's bound: a caller past ``max_connections`` waits instead of failing."""


class _SentinelPrimary(Redis):
    """The primary's client; closing it also closes the connections to the Sentinels."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def _through_sentinel(target: RedisTarget, max_connections: int) -> Redis:
    assert target.sentinels is not None
    primary: dict[str, Any] = dict(parse_url(target.url))
    tls = primary.pop("connection_class", None) is SSLConnection
    primary.pop("host", None)
    primary.pop("port", None)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        _addresses(target.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
            "socket_timeout": _SENTINEL_TIMEOUT_S,
        },
    )
    client: _SentinelPrimary = sentinel.master_for(
        target.sentinel_master,
        redis_class=_SentinelPrimary,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=_POOL_WAIT_S,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        ssl=tls,
        **primary,
        **_socket_options(),
        **(_tls_options(target.ca_file) if tls else {}),
    )
    client.sentinel_manager = sentinel
    return client


def _addresses(sentinels: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` (validated by the settings) as pairs; ``[v6]:port`` allowed."""
    pairs = []
    for item in sentinels.split(","):
        host, _, port = item.strip().rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs
