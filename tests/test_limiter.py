"""The shared limiter's Lua script, driven on an explicit clock: no real waiting."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from worker.store.keys import Keys
from worker.store.limiter import RateLimiter

pytestmark = pytest.mark.anyio

S = 1_000_000  # microseconds per second


async def test_slots_are_spaced_by_the_rate(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 20.0)
    t0 = 1_000 * S
    waits = [(await limiter.call("acquire", now_us=t0)).wait_s for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])


async def test_two_workers_share_one_schedule(redis: Redis, prefix: str) -> None:
    a = RateLimiter(redis, Keys(prefix).limiter, 10.0)
    b = RateLimiter(redis, Keys(prefix).limiter, 10.0)
    t0 = 1_000 * S
    waits = [(await x.call("acquire", now_us=t0)).wait_s for x in (a, b, a, b)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


async def test_idle_time_does_not_bank_a_burst(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 10.0)
    await limiter.call("acquire", now_us=1_000 * S)
    later = 1_060 * S
    waits = [(await limiter.call("acquire", now_us=later)).wait_s for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1, 0.2])


async def test_throttle_cuts_rate_once_per_second_and_pauses_fleet(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 20.0)
    t0 = 1_000 * S
    first = await limiter.call("throttled", pause_ms=500, now_us=t0)
    second = await limiter.call("throttled", pause_ms=0, now_us=t0 + 100_000)
    assert first.rate == pytest.approx(14.0)
    # Within the same second: no second cut, only 0.1 s of additive recovery (1/s per s).
    assert second.rate == pytest.approx(14.1)
    nxt = await limiter.call("acquire", now_us=t0 + 100_000)
    assert nxt.wait_s == pytest.approx(0.4, abs=1e-3)  # the shared pause holds everyone


async def test_a_huge_retry_after_pauses_the_fleet_for_at_most_300_s(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 10.0)
    t0 = 1_000 * S
    reply = await limiter.call("throttled", pause_ms=1e12, now_us=t0)
    assert reply.horizon_s == pytest.approx(300.0)


async def test_rate_never_falls_below_one_per_second_under_a_high_limit(
    redis: Redis, prefix: str
) -> None:
    key = Keys(prefix).limiter
    limiter = RateLimiter(redis, key, 100.0)
    t0 = 1_000 * S
    await redis.hset(key, mapping={"rate": "1.2", "updated": str(t0)})  # type: ignore[misc]
    cut = await limiter.call("throttled", now_us=t0)
    assert cut.rate == pytest.approx(1.0)


@pytest.mark.parametrize("limit", [1.0, 0.5, 0.05])
async def test_a_throttle_cuts_a_limit_at_or_under_one_per_second(
    redis: Redis, prefix: str, limit: float
) -> None:
    # The floor used to be 1/s whatever the limit: a throttle cut nothing, and the
    # effective rate read above the limit.
    limiter = RateLimiter(redis, Keys(prefix).limiter, limit)
    cut = await limiter.call("throttled", now_us=1_000 * S)
    assert cut.rate == pytest.approx(limit * 0.7)
    later = await limiter.call("peek", now_us=1_000 * S + 1)
    assert later.rate <= limit


async def test_rate_recovers_additively_then_slowly_near_the_ceiling(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 20.0)
    t0 = 1_000 * S
    cut = await limiter.call("throttled", now_us=t0)
    assert cut.rate == pytest.approx(14.0)
    after_2s = await limiter.call("peek", now_us=t0 + 2 * S)
    assert after_2s.rate == pytest.approx(16.0)  # +5% of the limit per second
    reaches_zone = await limiter.call("peek", now_us=t0 + 5 * S)
    assert reaches_zone.rate == pytest.approx(18.0)  # fast only up to 90% of the ceiling
    near = await limiter.call("peek", now_us=t0 + 7 * S)
    assert near.rate == pytest.approx(18.2)  # then 0.5% of the ceiling per second
    recovered = await limiter.call("peek", now_us=t0 + 60 * S)
    assert recovered.rate == pytest.approx(20.0)
