"""Two workers on one Redis share one rate limit, and together they use all of it.

This runs in real time (about three seconds) because what it proves is how requests from two
independent workers interleave on Redis's clock; the limiter's arithmetic itself is tested on
an explicit clock in test_limiter.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import RedisServer
from tests.harness import drained, make_settings, running_worker, wait_for, with_consumer
from worker.api.client import AckResult
from worker.store.enqueue import enqueue
from worker.store.keys import Keys

pytestmark = pytest.mark.anyio

RATE = 20.0
REQUESTS = 60


class StampingApi:
    """Records when each request arrives (monotonic seconds)."""

    def __init__(self, stamps: list[float]) -> None:
        self.stamps = stamps

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        self.stamps.append(time.monotonic())
        await anyio.lowlevel.checkpoint()
        return AckResult(len(ids), f"r{len(self.stamps)}")


def max_in_any_second(stamps: list[float]) -> int:
    ordered = sorted(stamps)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_two_workers_share_the_limit_and_use_it(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    await enqueue(redis, Keys(prefix), [f"{i:032x}" for i in range(REQUESTS)])
    stamps: list[float] = []
    base = make_settings(
        redis_server.url, prefix, batch_size=1, linger_ms=0, concurrency=4, rate_limit=RATE
    )
    async with (
        running_worker(base, redis, StampingApi(stamps)),
        running_worker(with_consumer(base, f"{prefix}-c2"), redis, StampingApi(stamps)),
    ):
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="all settled")
    assert len(stamps) == REQUESTS
    # GCRA with no burst: any one-second window holds at most RATE requests (+1 for the
    # window's closed edge).
    assert max_in_any_second(stamps) <= RATE + 1
    achieved = (len(stamps) - 1) / (max(stamps) - min(stamps))
    assert achieved >= 0.85 * RATE, f"fleet used only {achieved:.1f} of {RATE} requests/s"
