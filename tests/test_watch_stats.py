"""``worker.stats`` events as a reader of the JSON log lines sees them, and the counts behind."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from redis.asyncio import Redis

from tests.conftest import RedisServer, free_port
from tests.harness import FAST_POLICY, ScriptedApi, drained, make_settings, running_worker, wait_for
from worker.clock import SYSTEM_CLOCK
from worker.entries import DEFAULT_ACCOUNT, Holdings
from worker.logs import configure_logging
from worker.observe.reporter import StatsReporter
from worker.observe.view import WorkerView
from worker.pipeline.sendgate import SendGate
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.totals import ACKNOWLEDGE, POLL, LatencyHistogram, Totals

pytestmark = pytest.mark.anyio

IDS = [f"{i:032x}" for i in range(1, 26)]
# The fields docs/reference.md documents for worker.stats (redis_error only when Redis failed).
STATS_FIELDS = {
    "interval_s",
    "settled",
    "settled_per_s",
    "confirmed",
    "duplicates",
    "dead",
    "shortfall",
    "requests",
    "requests_by_action",
    "retries",
    "fleet_pauses",
    "rate_wait_s",
    "backlog",
    "backlog_change",
    "pending",
    "held",
    "in_flight",
    "effective_rate",
    "rate_limit",
    "sending",
    "problem",
    "confirmed_total",
    "dead_total",
    "dead_reasons",
    "shortfall_total",
}
COMMON_FIELDS = {"event", "level", "timestamp", "component"}


@contextmanager
def json_logging() -> Iterator[None]:
    """The production JSON renderer writing to stdout, for the test's body only.

    Configured inside the test, not in a fixture: pytest swaps the captured stdout between
    the setup and call phases, and the renderer keeps the stream it was given.
    """
    configure_logging(level="info", fmt="json", cache=False)
    try:
        yield
    finally:
        structlog.reset_defaults()


def stats_events(out: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "worker.stats"]


class SteppingClock:
    """Time moves only when the test lets one sleep end: an interval loop without waiting."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self._ticks, self._wait = anyio.create_memory_object_stream[None]()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, UTC)

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        await self._wait.receive()
        self.now_s += seconds

    async def tick(self) -> None:
        """End the sleep in progress (or the next one)."""
        await self._ticks.send(None)

    def __enter__(self) -> SteppingClock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._ticks.close()
        self._wait.close()


def _view(redis: Redis, prefix: str, totals: Totals) -> WorkerView:
    gate = SendGate(FAST_POLICY, SYSTEM_CLOCK, lambda: None)
    return WorkerView(
        redis, Keys(prefix), totals, Holdings(), {DEFAULT_ACCOUNT: gate}, anyio.Event(), 10.0
    )


def _settled_all(event: dict[str, Any]) -> bool:
    done: bool = event["confirmed_total"] == len(IDS) and event["held"] == 0
    return done and event["backlog"] == 0


async def test_a_running_worker_logs_stats_that_add_up(
    redis_server: RedisServer, redis: Redis, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await enqueue(redis, Keys(prefix), IDS)
    settings = make_settings(redis_server.url, prefix, stats_interval_s=0.05)
    seen: list[dict[str, Any]] = []

    async def caught_up() -> bool:
        seen.extend(stats_events(capsys.readouterr().out))
        return any(_settled_all(e) for e in seen)

    with json_logging():
        async with running_worker(settings, redis, ScriptedApi()) as worker:
            await wait_for(lambda: drained(redis, prefix), what="backlog settled")
            await wait_for(caught_up, what="a worker.stats event after the drain")
    last = next(e for e in seen if _settled_all(e))
    upto = seen[: seen.index(last) + 1]
    assert all(set(e) == STATS_FIELDS | COMMON_FIELDS for e in upto)
    assert sum(e["settled"] for e in upto) == len(IDS) == worker.totals.settled
    assert sum(e["requests"] for e in upto) == worker.totals.requests
    acknowledged = sum(e["requests_by_action"][ACKNOWLEDGE] for e in upto)
    assert acknowledged == worker.totals.requests_by_action()[ACKNOWLEDGE] > 0
    assert last["level"] == "info"
    assert last["component"] == "stats"
    assert last["sending"] == "open"
    assert last["problem"] is None
    assert last["dead_total"] == 0
    assert last["rate_limit"] == settings.rate_limit
    assert last["backlog"] == 0
    assert last["pending"] == 0
    assert last["held"] == 0
    assert last["in_flight"] == 0


async def test_the_interval_loop_runs_on_the_injected_clock(redis: Redis, prefix: str) -> None:
    await enqueue(redis, Keys(prefix), IDS[:4])
    totals = Totals()
    with SteppingClock() as clock, structlog.testing.capture_logs() as logs:
        reporter = StatsReporter(_view(redis, prefix, totals), 30.0, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(reporter.run)
            await clock.tick()
            await wait_for(_at_least(logs, 1), what="first event")
            totals.confirmed += 60
            await clock.tick()
            await wait_for(_at_least(logs, 2), what="second event")
            await clock.tick()
            await wait_for(_at_least(logs, 3), what="third event")
            tg.cancel_scope.cancel()
    events = [e for e in logs if e["event"] == "worker.stats"]
    assert all(e["interval_s"] == 30.0 for e in events)
    assert sum(e["settled"] for e in events) == 60
    assert any(e["settled_per_s"] == 2.0 for e in events)
    assert events[0]["backlog"] == 4
    assert events[0]["backlog_change"] is None
    assert events[1]["backlog_change"] == 0


def _at_least(logs: Sequence[Mapping[str, Any]], n: int) -> Callable[[], Awaitable[bool]]:
    async def enough() -> bool:
        return sum(1 for e in logs if e["event"] == "worker.stats") >= n

    return enough


async def test_a_redis_failure_is_logged_not_raised(prefix: str) -> None:
    dead_redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    view = _view(dead_redis, prefix, Totals())
    view.redis_timeout_s = 0.5
    try:
        with SteppingClock() as clock, structlog.testing.capture_logs() as logs:
            fields = await StatsReporter(view, 30.0, clock).report()
    finally:
        await dead_redis.aclose()
    assert fields["backlog"] is None
    assert fields["pending"] is None
    [event] = logs
    assert event["event"] == "worker.stats"
    assert event["log_level"] == "warning"
    assert event["redis_error"].startswith(("ConnectionError", "TimeoutError"))


def test_latency_buckets_follow_prometheus_le() -> None:
    hist = LatencyHistogram()
    for seconds in (0.01, 0.011, 0.3, 99.0):
        hist.observe(seconds)
    buckets = dict(hist.cumulative())
    assert buckets["0.01"] == 1  # a value equal to a bound is in that bucket
    assert buckets["0.025"] == 2
    assert buckets["0.5"] == 3
    assert buckets["30.0"] == 3
    assert buckets["+Inf"] == 4
    assert hist.sum_s == pytest.approx(99.321)


def test_requests_are_counted_by_action_and_account() -> None:
    totals = Totals()
    assert totals.requests_by_action() == {ACKNOWLEDGE: 0, POLL: 0}  # both, even when none
    totals.count_request(ACKNOWLEDGE)
    totals.count_request(ACKNOWLEDGE, "eu")
    totals.count_request(POLL, "eu")
    assert totals.requests == 3
    assert totals.requests_by == {
        (ACKNOWLEDGE, DEFAULT_ACCOUNT): 1,
        (ACKNOWLEDGE, "eu"): 1,
        (POLL, "eu"): 1,
    }
    assert totals.requests_by_action() == {ACKNOWLEDGE: 2, POLL: 1}
    stopped = totals.as_dict()  # the fields of worker.stopped
    assert stopped["requests"] == 3
    assert stopped["requests_by_action"] == {"acknowledge": 2, "poll": 1}


async def test_stats_split_each_intervals_requests_by_action(redis: Redis, prefix: str) -> None:
    totals = Totals()
    with SteppingClock() as clock, structlog.testing.capture_logs() as logs:
        reporter = StatsReporter(_view(redis, prefix, totals), 30.0, clock)
        totals.count_request(ACKNOWLEDGE)
        totals.count_request(ACKNOWLEDGE, "eu")
        totals.count_request(POLL)
        first = await reporter.report()
        totals.count_request(POLL, "eu")
        second = await reporter.report()
        third = await reporter.report()
    assert (first["requests"], first["requests_by_action"]) == (3, {"acknowledge": 2, "poll": 1})
    assert (second["requests"], second["requests_by_action"]) == (1, {"acknowledge": 0, "poll": 1})
    assert (third["requests"], third["requests_by_action"]) == (0, {"acknowledge": 0, "poll": 0})
    logged = [e["requests_by_action"] for e in logs if e["event"] == "worker.stats"]
    assert logged == [e["requests_by_action"] for e in (first, second, third)]
