"""Each account's API client, built from the settings, and the one way to re-read its
credentials.

``ackworker run`` opens one client per account, ``ackworker poll`` one for the account it
polls. After a refusal (see :class:`~worker.pipeline.sendgate.SendGate` and the poller) the
credentials are re-read with :func:`credential_reloader`, so an operator who fixes or rotates a
credentials file does not have to restart anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from worker.api.client import DomainClient
from worker.config.accounts import Account
from worker.config.settings import Settings
from worker.errors import ConfigError
from worker.logs import get_logger, scrubber

log = get_logger("credentials")


def client_for(
    settings: Settings, account: Account, *, pool_size: int | None = None
) -> DomainClient:
    """A client for ``account`` with the process's HTTP settings; use it as an async context.

    ``pool_size`` (connections) defaults to ``settings.concurrency``.
    """
    return DomainClient(
        endpoint=account.endpoint,
        credentials=account.credentials.load(),
        signature=account.signature,
        lang=settings.lang,
        user_client_ip=settings.user_client_ip,
        timeout_s=settings.http_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        pool_size=pool_size or settings.concurrency,
    )


def credential_reloader(account: Account, client: DomainClient) -> Callable[[], None]:
    """A function that re-reads ``account``'s credentials into ``client``.

    A source that cannot be read logs ``credentials.reload_failed`` and keeps the credentials
    in use: the operator may still be editing the file. New secrets are registered with the
    log scrubber before they are used.
    """

    def reload() -> None:
        try:
            fresh = account.credentials.load()
        except ConfigError as exc:
            log.error("credentials.reload_failed", account=account.name, error=str(exc))
            return
        scrubber.add_secret(fresh.access_key_secret)
        scrubber.add_secret(fresh.security_token)
        client.set_credentials(fresh)

    return reload


def process_secrets(settings: Settings, accounts: Iterable[Account]) -> list[str | None]:
    """What no log line may show: the Redis password and each account's secrets as loaded
    now (raises :class:`ConfigError` when a source cannot be read)."""
    secrets: list[str | None] = [urlsplit(settings.redis_url).password]
    for account in accounts:
        credentials = account.credentials.load()
        secrets += [credentials.access_key_secret, credentials.security_token]
    return secrets
