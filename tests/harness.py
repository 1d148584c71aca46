"""Running a worker in-process against the test's redis-server, with deadlines, not sleeps."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel

from worker.api.client import AckResult
from worker.config.credentials import Credentials, CredentialSource
from worker.config.settings import Settings
from worker.dev.mockapi.server import MockApi
from worker.entries import DEFAULT_ACCOUNT
from worker.pipeline.lanes import AccountClient, WorkerParts
from worker.pipeline.runner import Worker
from worker.retry import RetryPolicy
from worker.store.connection import RedisClient
from worker.store.keys import Keys

TEST_CREDENTIALS = Credentials("testid", "testsecret")
FAST_POLICY = RetryPolicy(
    max_attempts=3,
    base_s=0.001,
    cap_s=0.005,
    probe_base_s=0.01,
    probe_cap_s=0.05,
    budget_s=0.0,
    outage_after_s=0.2,
)


def make_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings for a test worker: short linger and claim times, test credentials."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "consumer": f"{prefix}-c1",
        "endpoint": "http://127.0.0.1:1",
        "batch_size": 10,
        "linger_ms": 20,
        "concurrency": 2,
        "rate_limit": 1000.0,
        "max_attempts": 3,
        "claim_idle_ms": 1000,
        "shutdown_grace_s": 5.0,
        "credentials": CredentialSource("environment", captured=TEST_CREDENTIALS),
    }
    values.update(overrides)
    return Settings(**values)


def with_consumer(settings: Settings, consumer: str) -> Settings:
    """The same settings for another replica."""
    return dataclasses.replace(settings, consumer=consumer)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Re-check ``predicate`` until true; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await anyio.sleep(0.01)


def stand_in_requests(api: MockApi, action: str) -> int:
    """Requests of ``action`` (``AcknowledgeTaskResult``, ``PollTaskResult``) the stand-in
    has answered."""
    by_action: dict[str, int] = api.stats()["requests_by_action"]  # type: ignore[assignment]
    return by_action.get(action, 0)


def polls(api: MockApi) -> int:
    """``PollTaskResult`` requests at the stand-in."""
    return stand_in_requests(api, "PollTaskResult")


def acks(api: MockApi) -> int:
    """``AcknowledgeTaskResult`` requests at the stand-in."""
    return stand_in_requests(api, "AcknowledgeTaskResult")


async def backlog(redis: RedisClient, prefix: str) -> int:
    """Entries still in the input stream and, with several accounts, their streams (new or
    pending)."""
    total = int(await redis.xlen(Keys(prefix).tasks))
    async for key in redis.scan_iter(match=f"{prefix}:tasks:*", _type="stream"):
        total += int(await redis.xlen(key))
    return total


async def drained(redis: RedisClient, prefix: str) -> bool:
    """True when the task stream is empty."""
    return await backlog(redis, prefix) == 0


async def stream_fields(redis: RedisClient, key: str) -> list[dict[str, str]]:
    """Every entry of a stream, decoded."""
    rows = await redis.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


class ScriptedApi:
    """A fake at the Acknowledger seam: ``behave(ids, call_no)`` answers or raises."""

    def __init__(self, behave: Callable[[Sequence[str], int], AckResult] | None = None) -> None:
        self.calls: list[list[str]] = []
        self._behave = behave or (lambda ids, n: AckResult(len(set(ids)), f"req-{n}"))

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        self.calls.append(list(ids))
        await anyio.lowlevel.checkpoint()
        return self._behave(ids, len(self.calls))


class GatedApi:
    """A fake at the seam that holds every request until ``release`` is set (never, for an
    API that hangs); records what was sent."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = anyio.Event()

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        self.calls.append(list(ids))
        await self.release.wait()
        return AckResult(len(set(ids)), f"req-{len(self.calls)}")


@asynccontextmanager
async def running_worker(
    settings: Settings,
    redis: RedisClient,
    client: Any,
    *,
    policy: RetryPolicy = FAST_POLICY,
    reload_credentials: Callable[[], None] | None = None,
    accounts: Mapping[str, AccountClient] | None = None,
) -> AsyncIterator[Worker]:
    """Run a worker until the block ends, then drain it and wait for it to stop.

    ``client`` serves the default account; ``accounts`` the named ones in ``settings``.
    """
    clients = {DEFAULT_ACCOUNT: AccountClient(client, reload_credentials), **(accounts or {})}
    parts = WorkerParts(
        redis=redis,
        keys=Keys.for_prefix(settings.key_prefix),
        policy=policy,
        clients=clients,
        rng=random.Random(7),
    )
    worker = Worker(settings, parts)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.request_stop()
