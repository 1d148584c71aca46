"""``ackworker poll`` against the real stand-in and a real Redis, in-process and as a process.

In-process pollers get a recording clock: every sleep (limiter wait, back-off, interval) is
recorded and returns at once, so back-off and pauses are checked without waiting for them.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from redis.asyncio import Redis

from tests.conftest import PYTHON, REPO, RedisServer, free_port, worker_env
from tests.harness import (
    FAST_POLICY,
    TEST_CREDENTIALS,
    make_settings,
    polls,
    stream_fields,
    wait_for,
)
from worker.config.accounts import Account
from worker.config.credentials import CredentialSource
from worker.config.settings import Settings
from worker.dev.mockapi.auth import AcceptedKey as MockKey
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.dev.sandbox import Child
from worker.pipeline.clients import client_for
from worker.pipeline.poller import CycleReport, Poller, PollerParts, memory_ttl_s
from worker.retry import RetryPolicy
from worker.store.enqueue import EnqueueMemory, Item, enqueue
from worker.store.keys import Keys
from worker.store.limiter import RateLimiter

pytestmark = pytest.mark.anyio

CYCLE_FIELDS = {"account", "pages", "found", "enqueued", "known", "duration_ms"}


class RecordingClock:
    """Virtual time: each sleep is recorded, moves the clock and returns at once."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, UTC)

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds
        await anyio.lowlevel.checkpoint()


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=5) as server:
        yield server


def poll_settings(redis_server: RedisServer, prefix: str, api: MockApi, **extra: Any) -> Settings:
    values: dict[str, Any] = {"poll_page_size": 10, "poll_interval_s": 0.1, **extra}
    return make_settings(redis_server.url, prefix, endpoint=api.url, **values)


@asynccontextmanager
async def poller_for(
    settings: Settings,
    redis: Redis,
    *,
    account: str = "default",
    clock: RecordingClock | None = None,
    policy: RetryPolicy = FAST_POLICY,
    reloads: list[int] | None = None,
) -> AsyncIterator[Poller]:
    chosen = settings.account(account)
    assert chosen is not None
    async with client_for(settings, chosen) as client:
        parts = PollerParts(
            redis,
            client,
            Keys(settings.key_prefix),
            policy,
            reload_credentials=(lambda: reloads.append(1)) if reloads is not None else None,
            clock=clock or RecordingClock(),
        )
        yield Poller(settings, chosen, parts)


def seed(api: MockApi, count: int, **fields: Any) -> list[str]:
    return api.state.seed_random(count, **fields)


# --- the producer path with a memory ------------------------------------------------------


async def test_only_new_adds_each_number_once_and_keeps_item_fields(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    memory = EnqueueMemory(keys.polled_prefix("default"), 3600)
    items = [Item("n1", "T1", "a.com"), Item("n2"), Item("n1", "T9", "b.com")]
    added = await enqueue(redis, keys, items, domain="fallback.com", only_new=memory)
    again = await enqueue(redis, keys, ["n2", "n3"], only_new=memory)
    assert (added, again) == (2, 1)
    assert await stream_fields(redis, keys.tasks) == [
        {"id": "n1", "task_no": "T1", "domain": "a.com"},
        {"id": "n2", "domain": "fallback.com"},
        {"id": "n3"},
    ]
    # Without a memory, enqueue adds whatever it is given, as before.
    assert await enqueue(redis, keys, ["n1"]) == 1


async def test_the_memory_expires_between_one_and_one_and_a_half_ttl(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    memory = EnqueueMemory(keys.polled_prefix("eu"), 3600)
    await enqueue(redis, keys, [f"n{i}" for i in range(50)], account="eu", only_new=memory)
    names = [k.decode() async for k in redis.scan_iter(match=f"{prefix}:polled:*")]
    assert names
    assert all(n.startswith(f"{prefix}:polled:eu:") for n in names)
    for name in names:
        assert 3600 <= await redis.ttl(name) <= 5400


def test_the_memory_ttl_is_the_dedupe_ttl_but_at_least_an_hour() -> None:
    base = make_settings("redis://127.0.0.1:1/0", "p")
    assert memory_ttl_s(base) == 86400
    assert memory_ttl_s(dataclasses.replace(base, dedupe_ttl_s=0)) == 3600
    with pytest.raises(ValueError, match="at least 1 s"):
        EnqueueMemory("p:polled:", 0)


# --- cycles ---------------------------------------------------------------------------------


async def test_a_cycle_enqueues_every_result_and_logs_one_poll_cycle(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    numbers = seed(api, 25, task_no="T-7", domain="example.org")
    settings = poll_settings(redis_server, prefix, api)
    async with poller_for(settings, redis) as poller:
        with structlog.testing.capture_logs() as logs:
            report = await poller.cycle()
    assert (report.pages, report.found, report.enqueued, report.known) == (3, 25, 25, 0)
    assert report.error is None
    entries = await stream_fields(redis, Keys(prefix).tasks)
    assert [e["id"] for e in entries] == numbers
    assert all(e["task_no"] == "T-7" and e["domain"] == "example.org" for e in entries)
    assert all("account" not in e for e in entries)
    cycles = [e for e in logs if e["event"] == "poll.cycle"]
    assert len(cycles) == 1
    assert cycles[0].keys() >= CYCLE_FIELDS
    assert (cycles[0]["found"], cycles[0]["enqueued"], cycles[0]["known"]) == (25, 25, 0)
    assert cycles[0]["account"] == "default"
    assert cycles[0]["pages"] == 3


@pytest.mark.parametrize(
    ("setting", "value", "seed_field"),
    [
        ("poll_task_no", "T-wanted", "task_no"),
        ("poll_domain_name", "wanted.example", "domain"),
        ("poll_task_result_status", 3, "status"),
    ],
)
async def test_filters_are_passed_through(
    redis_server: RedisServer,
    redis: Redis,
    prefix: str,
    api: MockApi,
    setting: str,
    value: object,
    seed_field: str,
) -> None:
    other = {"task_no": "T-other", "domain": "other.example", "status": 2}[seed_field]
    seed(api, 12, **{seed_field: other})
    wanted = seed(api, 7, **{seed_field: value})
    seed(api, 5, **{seed_field: other})
    settings = poll_settings(redis_server, prefix, api, **{setting: value})
    async with poller_for(settings, redis) as poller:
        report = await poller.cycle()
    assert (report.found, report.enqueued) == (7, 7)
    assert [e["id"] for e in await stream_fields(redis, Keys(prefix).tasks)] == wanted


async def test_known_numbers_are_not_enqueued_again_by_any_replica(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    seed(api, 25)
    settings = poll_settings(redis_server, prefix, api)
    async with poller_for(settings, redis) as first:
        await first.cycle()
        again = await first.cycle()
    async with poller_for(settings, redis) as replica:
        other = await replica.cycle()
    for report in (again, other):
        assert (report.found, report.enqueued, report.known) == (25, 0, 25)
    assert await redis.xlen(Keys(prefix).tasks) == 25


async def test_each_cycle_starts_again_at_page_1(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    numbers = seed(api, 25)
    settings = poll_settings(redis_server, prefix, api, poll_max_pages=2)
    async with poller_for(settings, redis) as poller:
        first = await poller.cycle()
        # Workers acknowledge what was enqueued: the rest moves up to page 1.
        api.state.acknowledge(numbers[:20])
        second = await poller.cycle()
        third = await poller.cycle()
    assert (first.pages, first.found, first.enqueued) == (2, 20, 20)
    assert (second.pages, second.found, second.enqueued) == (1, 5, 5)
    assert (third.found, third.enqueued, third.known) == (5, 0, 5)
    assert [e["id"] for e in await stream_fields(redis, Keys(prefix).tasks)] == numbers


async def test_an_invalid_number_is_skipped_and_counted(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    good = seed(api, 3)
    api.state.seed(["bad id;rm"])
    settings = poll_settings(redis_server, prefix, api)
    async with poller_for(settings, redis) as poller:
        report = await poller.cycle()
    assert (report.found, report.enqueued, report.invalid) == (4, 3, 1)
    assert [e["id"] for e in await stream_fields(redis, Keys(prefix).tasks)] == good


# --- the shared limiter ---------------------------------------------------------------------


def with_account(settings: Settings, name: str, rate_limit: float) -> Settings:
    source = CredentialSource("environment", captured=TEST_CREDENTIALS)
    account = Account(name, settings.endpoint, rate_limit, "v3", source)
    return dataclasses.replace(settings, named_accounts={name: account})


@pytest.mark.parametrize("account", ["default", "eu"])
async def test_the_poller_waits_on_its_accounts_shared_limiter(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, account: str
) -> None:
    seed(api, 5)
    settings = with_account(poll_settings(redis_server, prefix, api), "eu", 20.0)
    keys = Keys(prefix)
    # A worker of that account was throttled with a 2 s retry-after: the fleet pauses.
    await RateLimiter(redis, keys.limiter_for(account), 20.0).throttled(2.0)
    clock = RecordingClock()
    async with poller_for(settings, redis, account=account, clock=clock) as poller:
        report = await poller.cycle()
    assert report.enqueued == 5
    assert clock.sleeps[:1] != [], "the poller never waited"
    assert clock.sleeps[0] >= 1.5, clock.sleeps
    entries = await stream_fields(redis, keys.tasks)
    assert all(e.get("account", "default") == account for e in entries)


async def test_a_named_account_uses_its_own_limiter_key(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    seed(api, 5)
    settings = with_account(poll_settings(redis_server, prefix, api), "eu", 20.0)
    async with poller_for(settings, redis, account="eu") as poller:
        await poller.cycle()
    keys = Keys(prefix)
    assert await redis.exists(keys.limiter_for("eu")) == 1
    assert await redis.exists(keys.limiter) == 0


async def test_throttling_slows_the_fleet_backs_off_and_recovers(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    numbers = seed(api, 15)
    api.faults.update({"throttle_rate": 1.0, "retry_after_ms": 300})
    settings = poll_settings(redis_server, prefix, api, rate_limit=50.0)
    clock = RecordingClock()
    async with poller_for(settings, redis, clock=clock) as poller:
        with structlog.testing.capture_logs() as logs:
            failed = await poller.cycle()
        assert failed.error == "Throttling.User"
        assert failed.enqueued == 0
        assert polls(api) == FAST_POLICY.max_attempts
        retries = [e for e in logs if e["event"] == "poll.retry_scheduled"]
        assert [e["attempt"] for e in retries] == [1, 2]
        assert all(e["delay_s"] >= 0.3 for e in retries)  # the retry-after is honoured
        assert [e["event"] for e in logs].count("limiter.throttled") == 3
        raw: bytes | None = await redis.hget(Keys(prefix).limiter, "rate")  # type: ignore[misc]
        rate = float(raw or 0)
        assert rate < 50.0  # the whole fleet's rate was cut
        assert poller.failures == 1
        api.faults.update({"throttle_rate": 0.0})
        recovered = await poller.cycle()
    assert (recovered.error, recovered.enqueued) == (None, 15)
    assert poller.failures == 0
    assert [e["id"] for e in await stream_fields(redis, Keys(prefix).tasks)] == numbers


# --- fatal answers ------------------------------------------------------------------------

SLOW_PROBES = RetryPolicy(
    max_attempts=3, base_s=0.001, cap_s=0.005, probe_base_s=0.5, probe_cap_s=2
)


async def test_a_fatal_answer_backs_off_with_a_cap_and_polling_goes_on(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    seed(api, 8)
    api.verifier.replace_keys([MockKey("rotated", "rotated-secret")])
    settings = poll_settings(redis_server, prefix, api, poll_interval_s=0.1)
    clock, reloads = RecordingClock(), list[int]()
    async with poller_for(settings, redis, clock=clock, policy=SLOW_PROBES, reloads=reloads) as p:
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(p.run)

                async def failed_five_times() -> bool:
                    return p.failures >= 5

                await wait_for(failed_five_times, what="five failed cycles")
                api.verifier.replace_keys([MockKey("testid", "testsecret")])

                async def enqueued() -> bool:
                    return p.enqueued == 8

                await wait_for(enqueued, what="polling to resume")
                p.request_stop()
    failures = [e for e in logs if e["event"] == "poll.failed"]
    assert failures[0]["fatal"] is True
    assert failures[0]["code"].startswith("InvalidAccessKeyId")
    assert [e["retry_in_s"] for e in failures[:5]] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert len(reloads) >= 5  # the credentials are re-read before each retry
    assert p.failures == 0
    assert [e["event"] for e in logs].count("poll.stopped") == 1
    assert "rotated-secret" not in repr(logs)


async def test_once_returns_1_when_its_cycle_failed_and_0_when_it_worked(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    seed(api, 4)
    settings = poll_settings(redis_server, prefix, api)
    api.verifier.replace_keys([MockKey("rotated", "rotated-secret")])
    async with poller_for(settings, redis) as poller:
        assert await poller.run(once=True) == 1
        api.verifier.replace_keys([MockKey("testid", "testsecret")])
        assert await poller.run(once=True) == 0
    assert await redis.xlen(Keys(prefix).tasks) == 4


async def test_an_unreachable_redis_fails_the_cycle_not_the_poller(
    redis_server: RedisServer, prefix: str, api: MockApi
) -> None:
    seed(api, 3)
    settings = poll_settings(redis_server, prefix, api)
    gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        async with poller_for(settings, gone) as poller:
            first = await poller.cycle()
            second = await poller.cycle()
    finally:
        await gone.aclose()
    assert (first.error, second.error) == ("redis_unavailable", "redis_unavailable")
    assert poller.failures == 2


# --- the command as a process ---------------------------------------------------------------


def poll_env(redis_server: RedisServer, prefix: str, api: MockApi, **extra: str) -> dict[str, str]:
    values = {
        "ACKWORKER_REDIS_URL": redis_server.url,
        "ACKWORKER_KEY_PREFIX": prefix,
        "ACKWORKER_ENDPOINT": api.url,
        "ACKWORKER_POLL_PAGE_SIZE": "10",
        "ACKWORKER_POLL_INTERVAL_S": "0.2",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "testid",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "testsecret",
    }
    return worker_env(**{**values, **extra})


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def ackworker_poll(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    # run_process keeps the event loop, and so the in-process stand-in, serving meanwhile.
    with anyio.fail_after(60):
        return await anyio.run_process(
            [PYTHON, "-m", "worker", "poll", *args], env=env, check=False
        )


async def test_once_as_a_process_enqueues_and_exits_0(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi
) -> None:
    numbers = seed(api, 23)
    done = await ackworker_poll(poll_env(redis_server, prefix, api), "--once")
    assert done.returncode == 0, done.stderr.decode()
    cycles = [e for e in events(done.stdout.decode()) if e["event"] == "poll.cycle"]
    assert len(cycles) == 1
    assert cycles[0]["enqueued"] == 23
    assert cycles[0]["pages"] == 3
    assert [e["id"] for e in await stream_fields(redis, Keys(prefix).tasks)] == numbers


async def test_once_as_a_process_exits_1_on_refused_credentials_without_the_secret(
    redis_server: RedisServer, prefix: str, api: MockApi
) -> None:
    env = poll_env(redis_server, prefix, api, ALIBABA_CLOUD_ACCESS_KEY_SECRET="wrong-secret-1")
    done = await ackworker_poll(env, "--once", "--account", "default")
    assert done.returncode == 1
    output = done.stdout.decode() + done.stderr.decode()
    failed = [e for e in events(output) if e["event"] == "poll.failed"]
    assert failed
    assert failed[0]["fatal"] is True
    assert "wrong-secret-1" not in output
    assert "Traceback" not in output


async def test_an_unknown_account_exits_2_with_one_line(
    redis_server: RedisServer, prefix: str, api: MockApi
) -> None:
    done = await ackworker_poll(poll_env(redis_server, prefix, api), "--account", "nosuch")
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.count("\n") == 1
    assert "'nosuch'" in err
    assert "default" in err


def start_poller(env: dict[str, str], log_path: Path) -> Child:
    """``python -m worker poll`` with its log going to a file."""
    return Child("ackworker poll", [PYTHON, "-m", "worker", "poll"], env=env, log=log_path)


def named(child: Child, name: str) -> list[dict[str, Any]]:
    return [e for e in child.events() if e["event"] == name]


async def wait_exit(child: Child, timeout_s: float) -> int:
    return await anyio.to_thread.run_sync(lambda: child.wait_exit(timeout_s))


@pytest.fixture
def processes() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for process in started:
        process.kill()


async def test_sigterm_finishes_the_page_in_hand_then_exits_0(
    redis_server: RedisServer,
    redis: Redis,
    prefix: str,
    api: MockApi,
    tmp_path: Path,
    processes: list[Child],
) -> None:
    seed(api, 60)
    api.faults.update({"latency_ms": 400})
    poller = start_poller(poll_env(redis_server, prefix, api), tmp_path / "poll.log")
    processes.append(poller)

    async def request_in_flight() -> bool:
        return api.stats()["in_flight"] != 0

    await wait_for(request_in_flight, timeout_s=30, what="a PollTaskResult in flight")
    poller.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(poller, 30) == 0
    requests = polls(api)
    assert 1 <= requests < 6  # it stopped before reading all six pages
    # Every page it was sent was enqueued, whole: the one in flight at the signal too.
    assert await redis.xlen(Keys(prefix).tasks) == 10 * requests
    (cycle,) = named(poller, "poll.cycle")
    assert cycle["pages"] == requests
    assert cycle["enqueued"] == 10 * requests
    assert named(poller, "poll.draining")
    assert len(named(poller, "poll.stopped")) == 1


async def test_a_second_signal_stops_at_once(
    redis_server: RedisServer,
    redis: Redis,
    prefix: str,
    api: MockApi,
    tmp_path: Path,
    processes: list[Child],
) -> None:
    seed(api, 5)
    api.faults.update({"hang_rate": 1.0, "hang_s": 600})
    poller = start_poller(poll_env(redis_server, prefix, api), tmp_path / "poll.log")
    processes.append(poller)

    async def request_in_flight() -> bool:
        return api.stats()["in_flight"] != 0

    await wait_for(request_in_flight, timeout_s=30, what="a PollTaskResult in flight")
    poller.proc.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return bool(named(poller, "poll.draining"))

    await wait_for(draining, what="poll.draining")
    assert poller.proc.poll() is None  # still waiting for the page in hand
    poller.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(poller, 10) == 0
    assert named(poller, "poll.stopping_now")
    assert named(poller, "poll.stopped")
    (cycle,) = named(poller, "poll.cycle")  # the cancelled cycle still reports itself
    assert (cycle["pages"], cycle["enqueued"]) == (0, 0)
    assert await redis.xlen(Keys(prefix).tasks) == 0


def test_cycle_report_fields_add_up() -> None:
    report = CycleReport("eu", 10.0, pages=2, found=7, enqueued=4, known=2, invalid=1)
    fields = report.fields(10.25)
    assert fields.keys() >= CYCLE_FIELDS
    assert fields["duration_ms"] == 250.0
    assert fields["enqueued"] + fields["known"] + fields["invalid"] == fields["found"]


@pytest.mark.slow
def test_the_closed_loop_demo_leaves_nothing_pending(tmp_path: Path) -> None:
    out = tmp_path / "loop.json"
    args = [PYTHON, "-m", "worker.dev.closed_loop", "--count", "600", "--timeout-s", "60"]
    args += ["--log-dir", str(tmp_path), "--json-out", str(out)]
    done = subprocess.run(
        args, cwd=REPO, env=worker_env(), capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())
    assert summary["problems"] == []
    assert (summary["held"], summary["pending_after"], summary["confirmed"]) == (600, 0, 600)
    assert summary["enqueued"] == summary["stream_added"] == 600
    assert summary["cycles"] >= 1
    assert summary["worker"]["confirmed"] == 600
    assert "closed loop ok" in done.stdout
