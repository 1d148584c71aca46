"""The Redis deployment the settings describe: checked, connected, and its key names.

The settings name one server (``redis_url``), a Sentinel set (``redis_sentinels``) or a
Cluster (``redis_cluster``); :func:`redis_target` rejects combinations that cannot work, with
the variable to fix in the message, and :func:`open_redis` builds the client for it
(:mod:`worker.store.connection`). A Redis that refuses the login is a setting problem too:
:func:`login_problem` turns it into the :class:`~worker.errors.ConfigError` every command shows.
"""

from __future__ import annotations

from redis.asyncio.connection import parse_url
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

from worker.config.settings import ENV_NAMES, Settings
from worker.errors import ConfigError
from worker.store.connection import RedisClient, RedisTarget, connect
from worker.store.keys import Keys


def redis_target(settings: Settings) -> RedisTarget:
    """Where the settings' Redis is; raises :class:`ConfigError` for settings that cannot
    work together."""
    _check_topology(settings)
    return RedisTarget(
        url=settings.redis_url,
        cluster=settings.redis_cluster,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
        ca_file=settings.redis_ca_file,
    )


def open_redis(settings: Settings, *, max_connections: int) -> RedisClient:
    """The Redis client every command uses, built from the settings.

    ``max_connections`` bounds the pool of one server or of the Sentinels' primary. Raises
    :class:`~worker.errors.ConfigError` for settings that cannot work together.
    """
    return connect(redis_target(settings), max_connections=max_connections)


def keys_for(settings: Settings) -> Keys:
    """Key names for the settings' prefix (a hash tag in cluster mode)."""
    return Keys.for_prefix(settings.key_prefix, cluster=settings.redis_cluster)


def login_problem(exc: Exception) -> ConfigError | None:
    """The setting problem behind ``exc`` when Redis refused the login, else None."""
    url_name = ENV_NAMES["redis_url"]
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return ConfigError(f"{url_name}: Redis refused the login: {exc}")
    if isinstance(exc, ResponseError) and ("NOAUTH" in str(exc) or "WRONGPASS" in str(exc)):
        return ConfigError(f"{url_name}: Redis requires a password: {exc}")
    return None


def _is_tls(url: str) -> bool:
    return url.startswith("rediss://")


def _check_topology(settings: Settings) -> None:
    url_name = ENV_NAMES["redis_url"]
    if settings.redis_cluster and settings.redis_sentinels:
        raise ConfigError(
            f"{ENV_NAMES['redis_cluster']} and {ENV_NAMES['redis_sentinels']} are both set: "
            "choose a Redis Cluster or Sentinel"
        )
    if settings.redis_ca_file and not _is_tls(settings.redis_url):
        raise ConfigError(
            f"{ENV_NAMES['redis_ca_file']} is set but {url_name} is not a rediss:// URL: "
            "use rediss:// to talk TLS"
        )
    special = settings.redis_cluster or settings.redis_sentinels
    if special and settings.redis_url.startswith("unix://"):
        raise ConfigError(f"{url_name} must be redis:// or rediss:// for a Cluster or Sentinel")
    if settings.redis_cluster and parse_url(settings.redis_url).get("db", 0) != 0:
        raise ConfigError(f"{url_name} must name database 0 for a Redis Cluster (it has no other)")
