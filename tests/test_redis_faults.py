"""Workers whose Redis replies are lost, cut and stalled (worker/dev/faultproxy.py) still
record every outcome exactly once (issue 12, requirement 4). The books and the invariant
checks are in tests/faultbooks.py.

The randomized run is seeded: ``ACKWORKER_FAULT_SEED=<n>`` replays a run (a fresh seed is
drawn otherwise, and every failure message names it); ``ACKWORKER_FAULT_ROUNDS`` sets how
many rounds (5 by default), each bounded by :data:`ROUND_S`; ``ACKWORKER_FAULT_PROFILE``
picks the fault ranges (:data:`PROFILES`: ``mild`` by default, ``harsh`` by hand).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import RedisServer
from tests.faultbooks import BookedApi, Plan, problems, read_books
from tests.harness import drained, make_settings, running_worker, wait_for, with_consumer
from worker.dev.faultproxy import FaultProxy, fault_proxy
from worker.store.connection import RedisClient, make_redis
from worker.store.enqueue import enqueue
from worker.store.keys import Keys

pytestmark = pytest.mark.anyio

SEED_ENV = "ACKWORKER_FAULT_SEED"
ROUNDS = int(os.environ.get("ACKWORKER_FAULT_ROUNDS", "5"))
PROFILES = {
    "mild": {
        "drop_p": (0.01, 0.06),
        "cut_p": (0.0, 0.03),
        "stall_p": (0.0, 0.1),
        "stall_ms": (5, 80),
    },
    # Stalls near claim_idle_ms (1000 ms here) and many lost replies: a stress to run by hand.
    "harsh": {
        "drop_p": (0.05, 0.15),
        "cut_p": (0.0, 0.05),
        "stall_p": (0.0, 0.05),
        "stall_ms": (800, 1600),
    },
}
PROFILE = os.environ.get("ACKWORKER_FAULT_PROFILE", "mild")
"""Fault ranges each round draws from: ``mild`` (the default, in ``make test``) or ``harsh``."""
ROUND_S = 20.0 if PROFILE == "mild" else 45.0
"""Deadline for one round's backlog to settle."""
STOP_S = 15.0
"""Most a round may take beyond ROUND_S: its workers drained and stopped."""


@asynccontextmanager
async def through_proxy(
    server: RedisServer, seed: int = 0
) -> AsyncIterator[tuple[FaultProxy, RedisClient]]:
    """A proxy in front of ``server`` and the worker's own kind of client (the pool and the
    retries of ``ackworker run``) connected through it."""
    async with fault_proxy("127.0.0.1", server.port, seed=seed) as proxy:
        client = make_redis(proxy.url, max_connections=12)
        try:
            yield proxy, client
        finally:
            await client.aclose()


def warm_number(tag: str) -> str:
    return f"{tag}warm".rjust(32, "0")


async def warm_up(redis: Redis, prefix: str, number: str) -> None:
    """One number through the worker before any fault, so that every script it runs is
    loaded in Redis: a lost reply then hits a script that ran, never a NOSCRIPT answer."""
    await enqueue(redis, Keys(prefix), [number])
    await wait_for(lambda: drained(redis, prefix), what="the warm-up number settled")


def settle_call(keys: Keys) -> str:
    """Bytes only a settle script call carries: the reconcile stream is among its keys."""
    return keys.reconcile


@pytest.mark.parametrize("kind", ["reject", "short", "ok"])
async def test_a_lost_settle_reply_still_records_each_outcome_once(
    kind: str, redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    numbers = [f"{kind}{i:04d}".rjust(32, "0") for i in range(6)]
    plan = Plan(ok=[warm_number(kind)], entries=numbers)
    {"reject": plan.reject, "short": plan.short, "ok": plan.ok}[kind].extend(numbers)
    api = BookedApi(plan)
    async with through_proxy(redis_server) as (proxy, client):
        settings = make_settings(proxy.url, prefix, linger_ms=100)
        async with running_worker(settings, client, api):
            await warm_up(redis, prefix, warm_number(kind))
            proxy.next("drop", settle_call(keys))
            await enqueue(redis, keys, numbers)
            await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    assert proxy.stats.dropped == 1
    assert problems(plan, await read_books(redis, keys, plan.numbers), api) == []


def _seed() -> int:
    text = os.environ.get(SEED_ENV, "")
    return int(text) if text else random.SystemRandom().randrange(2**32)


def _faults(rng: random.Random) -> dict[str, float]:
    """One round's fault mix, drawn from the ranges of :data:`PROFILE`."""
    return {name: rng.uniform(*bounds) for name, bounds in PROFILES[PROFILE].items()}


async def _round(server: RedisServer, redis: Redis, prefix: str, rng: random.Random) -> list[str]:
    """One round on a fresh prefix, with one or two replicas; the problems found (none when
    the invariant holds), then a line describing the round."""
    keys = Keys(prefix)
    tag = f"r{rng.randrange(16**6):06x}"
    plan = Plan.random(rng, tag, count=rng.randint(30, 80), duplicates=rng.randint(0, 10))
    plan.ok.append(warm_number(tag))
    api = BookedApi(plan)
    faults, replicas = _faults(rng), rng.choice([1, 2])
    settings = make_settings(
        "redis://unused",
        prefix,
        batch_size=rng.choice([3, 5, 10]),
        concurrency=rng.choice([1, 2, 4]),
    )
    late: list[str] = []
    proxy_seed = rng.randrange(2**32)
    async with (
        fault_proxy("127.0.0.1", server.port, seed=proxy_seed) as proxy,
        AsyncExitStack() as stack,
    ):
        for n in range(1, replicas + 1):
            client = make_redis(proxy.url, max_connections=12)
            stack.push_async_callback(client.aclose)  # after its worker has stopped
            replica = with_consumer(settings, f"{prefix}-c{n}")
            await stack.enter_async_context(running_worker(replica, client, api))
        await warm_up(redis, prefix, warm_number(tag))
        proxy.next("drop", settle_call(keys))
        proxy.set(**faults)
        await enqueue(redis, keys, plan.entries)
        with anyio.move_on_after(ROUND_S) as waited:
            await wait_for(lambda: drained(redis, prefix), timeout_s=ROUND_S * 2)
        if waited.cancelled_caught:
            late.append(f"backlog not settled within {ROUND_S:g} s")
        # Stopping is not under test: the invariant must hold for what ran under faults.
        proxy.set(drop_p=0.0, cut_p=0.0, stall_p=0.0)
    books = await read_books(redis, keys, plan.numbers)
    described = (
        f"{replicas} replica(s), batch {settings.batch_size}, concurrency {settings.concurrency},"
        f" {len(plan.entries)} entries; faults {faults}; proxy {proxy.stats}"
    )
    return [*late, *problems(plan, books, api), described]


# Each round is bounded on its own; a long replay (many rounds) must not trip the default.
@pytest.mark.timeout(max(120.0, ROUNDS * (ROUND_S + STOP_S) + 30))
async def test_random_redis_faults_lose_nothing_and_record_nothing_twice(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    seed = _seed()
    print(
        f"redis fault seed {seed}: replay with {SEED_ENV}={seed} ACKWORKER_FAULT_PROFILE={PROFILE}"
    )
    for round_no in range(ROUNDS):
        rng = random.Random(f"{seed}/{round_no}")
        try:
            with anyio.fail_after(ROUND_S + STOP_S):
                *found, described = await _round(redis_server, redis, f"{prefix}r{round_no}", rng)
        except TimeoutError:
            found, described = [f"round took over {ROUND_S + STOP_S:g} s"], ""
        assert not found, (
            f"{SEED_ENV}={seed} ACKWORKER_FAULT_PROFILE={PROFILE}, round {round_no} of {ROUNDS}:"
            f" {len(found)} problems; "
            f"{described}\n" + "\n".join(found[:15])
        )


async def test_an_entry_whose_read_reply_was_lost_costs_no_extra_delivery(
    redis: Redis, prefix: str, redis_server: RedisServer
) -> None:
    # Redis counts a delivery even when XREADGROUP's reply is lost, and redis-py's retry
    # then reads other entries: the entry sits pending on the worker, unknown to it. It used
    # to wait for XAUTOCLAIM, a delivery more each time (more with each lost claim reply),
    # until a good number was dead-lettered redelivered_too_often.
    keys = Keys(prefix)
    number = "lostread".rjust(32, "0")
    plan = Plan(ok=[number], entries=[number])
    api = BookedApi(plan)
    settings = make_settings(redis_server.url, prefix, max_attempts=1)
    await enqueue(redis, keys, [number])
    # The read whose reply never arrived: delivered once to this very consumer.
    await redis.xreadgroup(keys.group, settings.consumer, {keys.tasks: ">"}, count=1)
    async with running_worker(settings, redis, api):
        await wait_for(lambda: drained(redis, prefix), what="the orphan settled")
    assert problems(plan, await read_books(redis, keys, plan.numbers), api) == []
    assert await redis.xlen(keys.dead) == 0
