"""An endpoint that is away pauses the account's sending fleet-wide; nothing is dead-lettered.

The fleet's state lives in the limiter hash (:mod:`worker.store.limiter`); these tests drive
it through real workers on a real redis-server with a scripted API at the seam, and through
the script on an explicit clock.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence

import anyio
import pytest
import structlog
from redis.asyncio import Redis

from tests.conftest import RedisServer
from tests.harness import (
    FAST_POLICY,
    ScriptedApi,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
)
from worker.api.answers import decode
from worker.api.client import AckResult
from worker.errors import ApiError, GatewayError, ServerError, TransportError
from worker.pipeline.runner import Worker
from worker.retry import RetryBudget
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.store.limiter import RateLimiter
from worker.store.outage import OutageRule

pytestmark = pytest.mark.anyio

IDS = [f"{i:032x}" for i in range(1, 121)]  # more than one replica's prefetch
S = 1_000_000
RULE = OutageRule(after_s=10.0, probe_base_s=5.0, probe_cap_s=30.0)


class Endpoint:
    """A scripted API that is away (raises ``failure``) until :meth:`back` is called."""

    def __init__(self, failure: ApiError) -> None:
        self.failure = failure
        self.away = True
        self.failed_calls = 0
        self.api = ScriptedApi(self._behave)

    def back(self) -> None:
        self.away = False

    def _behave(self, ids: Sequence[str], n: int) -> AckResult:
        if self.away:
            self.failed_calls += 1
            raise self.failure
        return AckResult(len(set(ids)), f"req-{n}")


@pytest.mark.parametrize(
    "failure",
    [
        TransportError("ConnectionRefused", "connect call failed"),
        TransportError("ConnectionReset", "connection reset by peer"),
        ServerError("ServiceUnavailable", "down", http_status=503),
        GatewayError("HTTP404", "no route", http_status=404),
    ],
    ids=["refused", "reset", "503", "404-without-code"],
)
async def test_an_outage_pauses_two_replicas_and_dead_letters_nothing(
    redis_server: RedisServer, redis: Redis, prefix: str, failure: ApiError
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS)
    endpoint = Endpoint(failure)
    one = make_settings(redis_server.url, prefix, consumer=f"{prefix}-a")
    two = make_settings(redis_server.url, prefix, consumer=f"{prefix}-b")
    with structlog.testing.capture_logs() as logs:
        async with (
            running_worker(one, redis, endpoint.api) as a,
            running_worker(two, redis, endpoint.api) as b,
        ):
            await wait_for(lambda: _paused(a, b), what="both replicas paused")
            failed_at_pause = endpoint.failed_calls
            # While paused only probes go out: one at a time, fleet-wide, spaced by back-off.
            await wait_for(lambda: _probes(a, b, 3), what="three probes")
            assert endpoint.failed_calls - failed_at_pause <= a.totals.probes + b.totals.probes
            endpoint.back()
            await wait_for(lambda: drained(redis, prefix), what="backlog confirmed")
            assert a.view().sending_problem is None
            assert b.view().sending_problem is None
    assert await redis.xlen(keys.dead) == 0
    assert a.totals.confirmed + b.totals.confirmed == len(IDS)
    assert a.totals.confirmed > 0
    assert b.totals.confirmed > 0
    events = [e["event"] for e in logs]
    assert events.count("api.outage_started") == 1  # declared once for the fleet
    assert events.count("api.outage_ended") == 1
    assert "api.outage_resumed" in events


async def _paused(*workers: Worker) -> bool:
    return all(w.view().sending_problem == "endpoint_unreachable" for w in workers)


async def _probes(a: Worker, b: Worker, n: int) -> bool:
    return a.totals.probes + b.totals.probes >= n


async def test_failures_while_others_answer_never_pause(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    limiter = RateLimiter(redis, keys.limiter, 100.0, outage=RULE)
    t0 = 1_000 * S
    for i in range(30):
        now = t0 + i * S
        await limiter.call("unreachable", now_us=now)
        await limiter.call("answered", now_us=now + S // 2)
    assert (await limiter.call("acquire", now_us=t0 + 31 * S)).state == "up"


async def test_the_fleet_probes_once_at_a_time_with_a_capped_back_off(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 100.0, outage=RULE)
    t0 = 1_000 * S
    assert (await limiter.call("unreachable", now_us=t0)).state == "up"
    assert (await limiter.call("unreachable", now_us=t0 + 9 * S)).state == "up"
    started = await limiter.call("unreachable", now_us=t0 + 10 * S)
    assert started.state == "started"
    down = t0 + 10 * S
    assert (await limiter.call("acquire", now_us=down + S)).state == "paused"
    probes: list[int] = []
    now = down
    while len(probes) < 6:
        reply = await limiter.call("acquire", now_us=now)
        if reply.state == "probe":
            probes.append(now)
            assert (await limiter.call("acquire", now_us=now)).state == "paused"  # one only
            await limiter.call("unreachable", now_us=now + 1000)
        now += S // 2
    gaps = [(b - a) / S for a, b in itertools.pairwise(probes)]
    assert gaps == pytest.approx([10, 20, 30, 30, 30], abs=0.5)  # 5 s first, then doubling


async def test_only_an_answer_to_a_request_sent_during_the_outage_ends_it(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 100.0, outage=RULE)
    t0 = 1_000 * S
    old = await limiter.call("acquire", now_us=t0)  # sent before the outage
    await limiter.call("unreachable", now_us=t0 + S)
    await limiter.call("unreachable", now_us=t0 + 11 * S)
    late = await limiter.call("answered", now_us=t0 + 12 * S, sent_us=old.now_us)
    assert late.state == "up"  # proves nothing: still down
    assert (await limiter.call("acquire", now_us=t0 + 12 * S)).state == "paused"
    probe = await limiter.call("acquire", now_us=t0 + 16 * S)
    assert probe.state == "probe"
    ended = await limiter.call("answered", now_us=t0 + 17 * S, sent_us=probe.now_us)
    assert ended.state == "resumed"
    assert ended.down_s == pytest.approx(6.0)
    assert (await limiter.call("acquire", now_us=t0 + 17 * S)).state == "up"


async def test_an_hour_old_failure_does_not_count_towards_an_outage(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 100.0, outage=RULE)
    t0 = 1_000 * S
    await limiter.call("unreachable", now_us=t0)
    assert (await limiter.call("unreachable", now_us=t0 + 3600 * S)).state == "up"


@pytest.mark.parametrize("status", [404, 405, 400, 409])
def test_a_4xx_without_a_code_is_the_way_to_the_endpoint_not_the_items(status: int) -> None:
    # Used to be a permanent per-number error: split to single numbers, all dead-lettered.
    with pytest.raises(GatewayError) as caught:
        decode(b'{"message": "no Route matched with those values"}', status, None)
    assert caught.value.endpoint_down
    assert caught.value.retryable


async def test_a_gateway_404_leaves_the_backlog_pending_not_rejected(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:8])
    endpoint = Endpoint(GatewayError("HTTP404", "no route", http_status=404))
    settings = make_settings(redis_server.url, prefix)
    async with running_worker(settings, redis, endpoint.api) as worker:
        await wait_for(lambda: _paused(worker), what="paused")
        endpoint.back()
        await wait_for(lambda: drained(redis, prefix), what="backlog confirmed")
    assert await stream_fields(redis, keys.dead) == []
    assert worker.totals.confirmed == 8
    assert all(len(call) > 1 for call in endpoint.api.calls)  # never split


def test_fast_policy_pauses_quickly() -> None:
    assert FAST_POLICY.outage_after_s < 1.0


class _Endpoint:
    """Readings a RetryBudget takes, set by hand."""

    def __init__(self) -> None:
        self.is_open = True
        self.answered_sent_s: float | None = None
        self.resumed_at_s: float | None = None


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def monotonic(self) -> float:
        return self.now_s


def _budget(endpoint: _Endpoint, clock: _Clock) -> RetryBudget:
    return RetryBudget(60.0, clock, endpoint)  # type: ignore[arg-type]


def test_the_budget_is_never_spent_while_paused_or_on_a_late_answer() -> None:
    endpoint, clock = _Endpoint(), _Clock()
    budget = _budget(endpoint, clock)
    down = TransportError("ConnectionRefused", "connect call failed")
    assert not budget.spent(down)  # the first failure, at 100 s
    endpoint.answered_sent_s = 99.0  # answered late: sent before the first failure
    clock.now_s = 1000.0
    assert not budget.spent(down)  # proves nothing about the endpoint now
    endpoint.answered_sent_s, endpoint.is_open = 500.0, False
    assert not budget.spent(down)  # paused: the endpoint is away, the batch is not at fault
    endpoint.is_open = True
    assert budget.spent(down)  # answered others since, budget long gone: the batch's fault
    endpoint.resumed_at_s = 990.0
    assert not budget.spent(down)  # counted again from the end of the pause


def test_retry_delays_stay_finite_however_many_attempts() -> None:
    policy = FAST_POLICY
    assert policy.delay_s(100_000, None, random.Random(1)) <= policy.cap_s
    assert policy.probe_delay_s(100_000) == policy.probe_cap_s


async def test_a_caller_that_reports_nothing_never_takes_the_probe(
    redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis, Keys(prefix).limiter, 100.0, outage=RULE)
    t0 = 1_000 * S
    await limiter.call("unreachable", now_us=t0)
    await limiter.call("unreachable", now_us=t0 + 10 * S)
    assert (await limiter.call("wait", now_us=t0 + 100 * S)).state == "paused"
    assert (await limiter.call("acquire", now_us=t0 + 100 * S)).state == "probe"


async def test_an_answer_after_a_failure_is_reported_at_once(redis: Redis, prefix: str) -> None:
    # Answers are reported at most once a second; one right after a failure used to wait, and
    # the failure's window stayed open until a second failure paused an idle fleet.
    key = Keys(prefix).limiter
    limiter = RateLimiter(redis, key, 100.0, outage=RULE)
    slot = await limiter.acquire()
    await limiter.answered(slot)  # reported: the next one is not due for a second
    await limiter.unreachable(TransportError("ConnectionReset", "reset by peer"))
    assert await redis.hget(key, "failing") not in (None, b"0")  # type: ignore[misc]
    await limiter.answered(await limiter.acquire())
    assert await redis.hget(key, "failing") == b"0"  # type: ignore[misc]


class _LateThenAway:
    """The first request fails; the second is answered late, after that failure; then the
    endpoint refuses every connection until :meth:`back`."""

    def __init__(self) -> None:
        self.calls = 0
        self.away = False
        self.first_failed = anyio.Event()

    def back(self) -> None:
        self.away = False

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        self.calls += 1
        if self.calls == 1:
            self.away = True
            self.first_failed.set()
            raise TransportError("ConnectionReset", "reset by peer")
        if self.calls == 2:
            await self.first_failed.wait()
            return AckResult(len(ids), "req-late")  # sent before the failure, answered after
        if self.away:
            raise TransportError("ConnectionRefused", "connect call failed")
        return AckResult(len(ids), f"req-{self.calls}")


async def test_an_outage_longer_than_the_budget_still_dead_letters_nothing(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:6])
    api = _LateThenAway()
    # As with the defaults (10 s, 300 s), the pause begins well before the budget ends.
    policy = dataclasses.replace(FAST_POLICY, budget_s=0.6)
    settings = make_settings(redis_server.url, prefix, batch_size=1, concurrency=2)
    async with running_worker(settings, redis, api, policy=policy) as worker:

        async def long_past_the_budget() -> bool:
            return worker.totals.probes >= 20  # a probe every 50 ms at most: over 1 s paused

        await wait_for(long_past_the_budget, what="an outage far longer than the budget")
        assert await redis.xlen(keys.dead) == 0
        api.back()
        await wait_for(lambda: drained(redis, prefix), what="backlog confirmed")
    assert await redis.xlen(keys.dead) == 0
    assert worker.totals.confirmed == 6
