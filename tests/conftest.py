"""Shared fixtures: a real redis-server on a free loopback port, started by the tests with
:mod:`worker.dev.sandbox`, the one harness for throwaway processes.

The machine's shared Redis on 6379 is never touched. One server serves the session; every
test gets its own key prefix, so tests never need to flush anything.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from worker.dev import sandbox
from worker.dev.sandbox import RedisServer as RedisServer

REPO = Path(__file__).resolve().parent.parent
free_port = sandbox.free_port
worker_env = sandbox.clean_env  # a subprocess environment without stray settings
_prefixes = itertools.count()


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout_s``."""
    sandbox.wait_until(
        predicate, timeout_s=timeout_s, what=what, interval_s=0.01, error=AssertionError
    )


def start_redis(port: int, workdir: str | Path, *extra: str) -> RedisServer:
    """A throwaway redis-server (the sandbox's) on ``port`` with its data in ``workdir`` and
    ``extra`` options; its output is discarded."""
    return RedisServer(Path(workdir), *extra, port=port)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="ackworker-redis-") as workdir:
        # Another port if the one found free was taken before redis-server bound it.
        server = sandbox.retrying(lambda: start_redis(free_port(), workdir), attempts=5)
        yield server
        server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{os.getpid()}x{next(_prefixes)}"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


PYTHON = sys.executable
