"""``ackworker run``: the process around one :class:`~worker.pipeline.runner.Worker`.

Loads every account's credentials, configures logging so none of their secrets is ever
printed, opens Redis and one HTTP client per account, and serves until SIGTERM or SIGINT
(the first drains, the second stops at once; see :mod:`worker.pipeline.runner`).
"""

from __future__ import annotations

import contextlib

import anyio

from worker.config.settings import Settings
from worker.config.topology import keys_for, open_redis
from worker.lifecycle import serve_until_signalled
from worker.logs import configure_logging, get_logger
from worker.pipeline.clients import client_for, credential_reloader, process_secrets
from worker.pipeline.lanes import AccountClient, WorkerParts
from worker.pipeline.runner import Worker
from worker.totals import Totals

log = get_logger("worker")


async def serve(settings: Settings) -> Totals:
    """Run one worker with real Redis and HTTP until SIGTERM or SIGINT."""
    lanes = len(settings.account_names)
    redis = open_redis(settings, max_connections=(settings.concurrency * 2 + 4) * lanes)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(redis.aclose)
        clients: dict[str, AccountClient] = {}
        for account in settings.all_accounts.values():
            client = await stack.enter_async_context(client_for(settings, account))
            clients[account.name] = AccountClient(client, credential_reloader(account, client))
        policy = settings.retry_policy
        worker = Worker(settings, WorkerParts(redis, keys_for(settings), policy, clients))
        return await serve_until_signalled(
            worker.run, worker.request_stop, log=log, event="worker.signal"
        )


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_worker(settings: Settings) -> int:
    """``ackworker run``: configure logs, serve until signalled; the exit code."""
    secrets = process_secrets(settings, settings.all_accounts.values())
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=secrets)
    # uvloop's transports and loop cost roughly half of asyncio's per request; the worker
    # still runs on plain asyncio where uvloop is not installed.
    anyio.run(serve, settings, backend_options={"use_uvloop": _have_uvloop()})
    return 0
