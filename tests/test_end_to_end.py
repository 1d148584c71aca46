"""The worker against the stand-in over real HTTP, in-process and as real processes.

After each scenario the invariant is checked: every number ever enqueued is still in the
stream, or confirmed at the stand-in, or dead-lettered with a reason, or listed in reconcile.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import PYTHON, RedisServer, worker_env
from tests.harness import (
    TEST_CREDENTIALS,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
)
from worker.api.client import DomainClient
from worker.config.credentials import Credentials
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.dev.sandbox import Child
from worker.store.connection import RedisClient
from worker.store.enqueue import enqueue
from worker.store.keys import Keys

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=3) as server:
        yield server


async def assert_invariant(
    redis: RedisClient, prefix: str, api: MockApi, numbers: list[str]
) -> None:
    """Every number is in the stream, confirmed, dead-lettered or in reconcile."""
    keys = Keys(prefix)
    in_stream = {f["id"] for f in await stream_fields(redis, keys.tasks) if "id" in f}
    dead = {d["id"] for d in await stream_fields(redis, keys.dead)}
    reconciled: set[str] = set()
    for record in await stream_fields(redis, keys.reconcile):
        reconciled.update(json.loads(record["ids"]))
    confirmed = set(api.state.confirmed_ids())
    lost = [n for n in numbers if n not in in_stream | dead | reconciled | confirmed]
    assert lost == [], f"{len(lost)} numbers silently gone, e.g. {lost[:3]}"


async def test_mild_faults_all_settle_and_nothing_is_lost(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    numbers = api.state.seed_random(400)
    unknown = [f"{i:032x}" for i in range(5)]
    await enqueue(redis, Keys(prefix), numbers + unknown + numbers[:20])
    api.faults.update({"throttle_rate": 0.05, "error_rate": 0.05, "latency_ms": 5, "jitter_ms": 5})
    # Batches of 10: some 45 requests, so the seeded 10% of faults strike some of them.
    settings = make_settings(
        redis_server.url, prefix, endpoint=api.url, batch_size=10, concurrency=4, max_attempts=6
    )
    async with (
        DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as client,
        running_worker(settings, redis, client) as worker,
    ):
        await wait_for(lambda: drained(redis, prefix), timeout_s=60, what="backlog settled")
    await assert_invariant(redis, prefix, api, numbers + unknown)
    assert set(numbers) <= set(api.state.confirmed_ids())
    assert api.state.confirmed_more_than_once() == []
    assert worker.totals.duplicates == 20
    assert worker.totals.shortfall == 5  # the unknown numbers, after one resend
    assert sum(worker.totals.retries.values()) > 0


async def test_bad_credentials_keep_items_until_fixed(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    numbers = api.state.seed_random(50)
    await enqueue(redis, Keys(prefix), numbers)
    wrong = Credentials(TEST_CREDENTIALS.access_key_id, "not-the-secret")
    settings = make_settings(redis_server.url, prefix, endpoint=api.url)
    probes: list[int] = []
    async with DomainClient(endpoint=api.url, credentials=wrong) as client:

        def reload() -> None:
            probes.append(1)
            if len(probes) >= 3:  # the operator fixed the credentials file
                client.set_credentials(TEST_CREDENTIALS)

        async with running_worker(settings, redis, client, reload_credentials=reload) as worker:
            await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="settled after fix")
    assert await redis.xlen(Keys(prefix).dead) == 0
    assert worker.totals.confirmed == 50
    assert api.stats()["errors_by_code"].get("SignatureDoesNotMatch", 0) >= 1  # type: ignore[attr-defined]
    await assert_invariant(redis, prefix, api, numbers)


# --- real processes ---------------------------------------------------------------------


def start_worker(env: dict[str, str], log_path: Path) -> Child:
    """``python -m worker run`` with its JSON log lines going to a file."""
    return Child("ackworker run", [PYTHON, "-m", "worker", "run"], env=env, log=log_path)


def has_event(child: Child, name: str) -> bool:
    return any(e.get("event") == name for e in child.events())


def process_env(
    redis_server: RedisServer, prefix: str, api: MockApi, consumer: str
) -> dict[str, str]:
    return worker_env(
        ACKWORKER_REDIS_URL=redis_server.url,
        ACKWORKER_KEY_PREFIX=prefix,
        ACKWORKER_CONSUMER=consumer,
        ACKWORKER_ENDPOINT=api.url,
        ACKWORKER_BATCH_SIZE="10",
        ACKWORKER_LINGER_MS="20",
        ACKWORKER_CONCURRENCY="2",
        ACKWORKER_RATE_LIMIT="200",
        ACKWORKER_CLAIM_IDLE_MS="1000",
        ACKWORKER_SHUTDOWN_GRACE_S="10",
        ALIBABA_CLOUD_ACCESS_KEY_ID="testid",
        ALIBABA_CLOUD_ACCESS_KEY_SECRET="testsecret",
    )


async def pending_of(redis: Redis, prefix: str, consumer: str) -> int:
    keys = Keys(prefix)
    info = await redis.xpending(keys.tasks, keys.group)
    for row in info.get("consumers") or []:
        if row["name"].decode() == consumer:
            return int(row["pending"])
    return 0


async def test_kill_9_mid_batch_twice_then_survivor_finishes(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, tmp_path: Path
) -> None:
    numbers = api.state.seed_random(300)
    await enqueue(redis, Keys(prefix), numbers)
    api.faults.update({"latency_ms": 150})
    survivor = start_worker(process_env(redis_server, prefix, api, "survivor"), tmp_path / "s.log")
    victims: list[Child] = []
    try:
        for round_no in range(2):
            name = f"victim{round_no}"
            victim = start_worker(
                process_env(redis_server, prefix, api, name), tmp_path / f"{name}.log"
            )
            victims.append(victim)

            async def mid_batch(consumer: str = name) -> bool:
                return await pending_of(redis, prefix, consumer) > 0

            await wait_for(mid_batch, timeout_s=30, what=f"{name} holding entries")
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
        await wait_for(lambda: drained(redis, prefix), timeout_s=60, what="survivor finished")
        survivor.proc.send_signal(signal.SIGTERM)
        assert survivor.proc.wait(timeout=20) == 0
    finally:
        for p in [survivor, *victims]:
            p.kill()
    await assert_invariant(redis, prefix, api, numbers)
    assert set(api.state.confirmed_ids()) == set(numbers)
    # A number re-sent after a crash was at most one that was in flight at the kill.
    resent = api.state.confirmed_more_than_once()
    assert len(resent) <= 2 * 2 * 10


async def test_sigterm_drains_and_exits_zero(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, tmp_path: Path
) -> None:
    numbers = api.state.seed_random(400)
    await enqueue(redis, Keys(prefix), numbers)
    api.faults.update({"latency_ms": 100})
    worker = start_worker(process_env(redis_server, prefix, api, "w1"), tmp_path / "w.log")
    try:

        async def working() -> bool:
            return api.state.confirmed_count >= 20

        await wait_for(working, timeout_s=30, what="some confirmations")
        worker.proc.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: worker.proc.wait(timeout=30))
    finally:
        worker.kill()
    assert code == 0
    assert await pending_of(redis, prefix, "w1") == 0  # in flight finished, unsent handed back
    stopped = [e for e in worker.events() if e.get("event") == "worker.stopped"]
    assert len(stopped) == 1
    assert stopped[0]["confirmed"] == api.state.confirmed_count
    assert has_event(worker, "worker.draining")
    await assert_invariant(redis, prefix, api, numbers)
    left = {f["id"] for f in await stream_fields(redis, Keys(prefix).tasks)}
    assert left == set(numbers) - set(api.state.confirmed_ids())


async def test_second_signal_stops_at_once_and_loses_nothing(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, tmp_path: Path
) -> None:
    numbers = api.state.seed_random(100)
    await enqueue(redis, Keys(prefix), numbers)
    api.faults.update({"hang_rate": 1.0, "hang_s": 120})
    env = process_env(redis_server, prefix, api, "w1")
    env["ACKWORKER_SHUTDOWN_GRACE_S"] = "120"
    env["ACKWORKER_HTTP_TIMEOUT_S"] = "120"
    worker = start_worker(env, tmp_path / "w.log")
    try:

        async def requests_hanging() -> bool:
            return api.stats()["in_flight"] == 2  # concurrency 2, both stuck

        await wait_for(requests_hanging, timeout_s=30, what="two requests hanging")
        worker.proc.send_signal(signal.SIGTERM)
        await wait_for(
            lambda: anyio.to_thread.run_sync(lambda: has_event(worker, "worker.draining")),
            what="drain started",
        )
        worker.proc.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: worker.proc.wait(timeout=15))
    finally:
        worker.kill()
    assert code == 0
    assert has_event(worker, "worker.stopping_now")
    assert api.state.confirmed_count == 0
    await assert_invariant(redis, prefix, api, numbers)
    assert await redis.xlen(Keys(prefix).tasks) == len(numbers)
