"""``ackworker run``: the process around one :class:`~worker.runner.Worker`.

Loads every account's credentials, configures logging so none of their secrets is ever
printed, opens Redis and one HTTP client per account, and serves until SIGTERM or SIGINT
(the first drains, the second stops at once; see :mod:`worker.runner`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio

from worker.accounts import DEFAULT_ACCOUNT, Account, client_for
from worker.client import DomainClient
from worker.lanes import AccountParts
from worker.logs import configure_logging, get_logger, scrubber
from worker.redis_conn import keys_for, open_redis
from worker.retry import RetryPolicy
from worker.runner import Worker, WorkerParts
from worker.settings import Settings
from worker.stats import Totals

log = get_logger("worker")


async def _watch_signals(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("worker.signal", signal=signal.Signals(signum).name)
            worker.request_stop()


async def serve(settings: Settings) -> Totals:
    """Run one worker with real Redis and HTTP until SIGTERM or SIGINT."""
    keys = keys_for(settings)
    lanes = len(settings.account_names)
    redis = open_redis(settings, max_connections=(settings.concurrency * 2 + 4) * lanes)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(redis.aclose)
        clients: dict[str, AccountParts] = {}
        for name in settings.account_names:
            account = settings.account(name)
            assert account is not None
            client = await stack.enter_async_context(client_for(settings, account))
            clients[name] = AccountParts(client, _reloader(account, client))
        default = clients.pop(DEFAULT_ACCOUNT)
        policy = RetryPolicy(max_attempts=settings.max_attempts)
        parts = WorkerParts(
            redis, default.client, keys, policy, default.reload_credentials, accounts=clients
        )
        worker = Worker(settings, parts)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, worker)
            totals = await worker.run()
            tg.cancel_scope.cancel()
    return totals


def _reloader(account: Account, client: DomainClient) -> Callable[[], None]:
    """Re-read ``account``'s credentials into ``client`` (after a refusal, see SendGate)."""

    def reload() -> None:
        fresh = account.credentials.load()
        scrubber.add_secret(fresh.access_key_secret)
        scrubber.add_secret(fresh.security_token)
        client.set_credentials(fresh)

    return reload


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_worker(settings: Settings) -> int:
    """``ackworker run``: configure logs, serve until signalled; the exit code."""
    secrets: list[str | None] = [urlsplit(settings.redis_url).password]
    for name in settings.account_names:
        account = settings.account(name)
        assert account is not None
        credentials = account.credentials.load()
        secrets += [credentials.access_key_secret, credentials.security_token]
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=secrets)
    # uvloop's transports and loop cost roughly half of asyncio's per request; the worker
    # still runs on plain asyncio where uvloop is not installed.
    anyio.run(serve, settings, backend_options={"use_uvloop": _have_uvloop()})
    return 0
