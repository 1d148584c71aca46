"""``ackworker poll``: run the bundled poller (:mod:`worker.pipeline.poller`) for one account.

The first SIGTERM or SIGINT lets the page in hand be enqueued, then stops; a second stops at
once. Exit code 2 for an account that is not configured.
"""

from __future__ import annotations

import sys

import anyio

from worker.config.accounts import Account
from worker.config.settings import Settings
from worker.config.topology import keys_for, open_redis
from worker.lifecycle import serve_until_signalled
from worker.logs import configure_logging, get_logger
from worker.pipeline.clients import client_for, credential_reloader, process_secrets
from worker.pipeline.poller import Poller, PollerParts

log = get_logger("poller")


async def serve_poller(settings: Settings, account: Account, once: bool) -> int:
    """Run one poller with real Redis and HTTP until SIGTERM or SIGINT (or one cycle)."""
    redis = open_redis(settings, max_connections=4)
    try:
        async with client_for(settings, account, pool_size=2) as client:
            policy = settings.retry_policy
            reload = credential_reloader(account, client)
            parts = PollerParts(redis, client, keys_for(settings), policy, reload)
            poller = Poller(settings, account, parts)
            return await serve_until_signalled(
                lambda: poller.run(once=once), poller.request_stop, log=log, event="poll.signal"
            )
    finally:
        await redis.aclose()


def poll_command(settings: Settings, account_name: str, *, once: bool) -> int:
    """``ackworker poll``: the exit code (2: unknown account or bad settings)."""
    account = settings.account(account_name)
    if account is None:
        known = ", ".join(settings.account_names)
        print(
            f"ackworker: unknown account {account_name!r}; configured accounts: {known}",
            file=sys.stderr,
        )
        return 2
    secrets = process_secrets(settings, [account])
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=secrets)
    return anyio.run(serve_poller, settings, account, once)
