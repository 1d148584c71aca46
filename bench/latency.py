"""Scenario ``latency``: enqueue → confirmed at the API, with a producer at 30% of capacity.

Capacity is what the configured rate limit allows: 20 requests/s × 100 numbers = 2000
numbers/s, so the producer XADDs 600 numbers/s for ``--latency-s`` seconds (default 30),
each entry stamped with field ``t`` (epoch ms; the worker ignores extra fields). The
stand-in answers after 20 ms.

The stand-in does not record when it confirmed each number, so the confirm time is observed:
``GET /_admin/confirmed`` (every confirmed number, in confirmation order) is polled about
every 20 ms and each number is stamped when it first appears. A number first seen in poll
``k`` was confirmed after poll ``k-1`` was sent and before poll ``k`` was answered; the
latencies reported are the upper end of that bracket (``p*_ms``), with the lower end's p99
and the polling interval beside them, so the resolution is on the record.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.contestants import WorkerConfig, ackworker_args
from bench.data import KEYS, ensure_group, make_ids, write_seed_file
from bench.measure import median, percentile
from bench.procs import BenchError, Stack, poll_until, stack
from bench.scenario import Numbers, Options, Row
from worker.dev.sandbox import Child

NAME = "latency"
LATENCY_MS = 20
WORKER = WorkerConfig(rate_limit=20, batch_size=100, concurrency=4, linger_ms=200)
CAPACITY_PER_S = WORKER.rate_limit * WORKER.batch_size
POLL_S = 0.02
TICK_S = 0.005
TARGET_MS = WORKER.linger_ms + 2 * LATENCY_MS
ROWS = (
    Row("p50 enqueue → confirmed ms", ("p50_ms",), "", 1),
    Row("p95 enqueue → confirmed ms", ("p95_ms",), "", 1),
    Row("p99 enqueue → confirmed ms", ("p99_ms",), f"≤ {TARGET_MS}", 1),
    Row("p99, lower end of the bracket ms", ("p99_lower_ms",), "", 1),
    Row("confirm polling interval, median ms", ("poll_interval_ms_median",), "", 1),
    Row("confirm polling interval, max ms", ("poll_interval_ms_max",), "", 1),
    Row("numbers produced per s", ("produced_per_s",), "", 0),
)


@dataclass(slots=True)
class Timings:
    """Epoch seconds: when each number was stamped, and the bracket of its confirmation."""

    stamped: dict[str, float] = field(default_factory=dict)
    seen_before: dict[str, float] = field(default_factory=dict)
    seen_by: dict[str, float] = field(default_factory=dict)
    polls: list[float] = field(default_factory=list)
    produce_s: float = 0.0


async def produce(redis: Redis, ids: list[str], rate: float, t: Timings) -> None:
    """XADD ``ids`` at ``rate`` per second, every entry stamped with ``t`` (epoch ms)."""
    started = time.monotonic()
    sent = 0
    while sent < len(ids):
        due = min(len(ids), int((time.monotonic() - started) * rate) + 1)
        if due > sent:
            now = time.time()
            stamp = str(int(now * 1000))
            async with redis.pipeline(transaction=False) as pipe:
                for number in ids[sent:due]:
                    pipe.xadd(KEYS.tasks, {"id": number, "t": stamp})
                await pipe.execute()
            t.stamped.update(dict.fromkeys(ids[sent:due], now))
            sent = due
        await asyncio.sleep(TICK_S)
    t.produce_s = time.monotonic() - started


async def observe(http: aiohttp.ClientSession, api_url: str, total: int, t: Timings) -> None:
    """Poll the stand-in's confirmed list until ``total`` numbers are confirmed."""
    count, previous_sent = 0, time.time()
    while count < total:
        sent = time.time()
        async with http.get(f"{api_url}/_admin/confirmed") as reply:
            ids: list[str] = orjson.loads(await reply.read())["ids"]
        received = time.time()
        t.polls.append(received)
        for number in ids[count:]:
            t.seen_before[number], t.seen_by[number] = previous_sent, received
        count, previous_sent = len(ids), sent
        await asyncio.sleep(max(0.0, POLL_S - (time.time() - sent)))


async def produce_and_observe(s: Stack, ids: list[str], rate: float, timeout_s: float) -> Timings:
    """Run the producer and the observer together; BenchError after ``timeout_s``."""
    t = Timings()
    redis = Redis.from_url(s.redis_url)
    try:
        async with aiohttp.ClientSession() as http:
            producer = asyncio.create_task(produce(redis, ids, rate, t))
            try:
                await asyncio.wait_for(observe(http, s.api_url, len(ids), t), timeout_s)
            except TimeoutError:
                raise BenchError(f"not every number confirmed after {timeout_s:g} s") from None
            finally:
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
    finally:
        await redis.aclose()
    return t


def wait_consuming(s: Stack, worker: Child) -> None:
    """Wait until the worker is reading: a client of Redis is in XREADGROUP."""

    def reading() -> bool | None:
        worker.check_alive()
        clients: list[dict[str, str]] = s.redis.client_list()  # type: ignore[assignment]
        return True if any(c.get("cmd") == "xreadgroup" for c in clients) else None

    poll_until(reading, timeout_s=60, what="the worker to start reading")


def summarize(t: Timings, ids: list[str]) -> Numbers:
    """Latency percentiles and the polling resolution, in milliseconds."""
    upper = [(t.seen_by[n] - t.stamped[n]) * 1000 for n in ids]
    lower = [max(0.0, t.seen_before[n] - t.stamped[n]) * 1000 for n in ids]
    intervals = [(b - a) * 1000 for a, b in zip(t.polls, t.polls[1:], strict=False)]
    return {
        "p50_ms": percentile(upper, 50),
        "p95_ms": percentile(upper, 95),
        "p99_ms": percentile(upper, 99),
        "max_ms": max(upper),
        "p50_lower_ms": percentile(lower, 50),
        "p99_lower_ms": percentile(lower, 99),
        "poll_interval_ms_median": median(intervals),
        "poll_interval_ms_max": max(intervals, default=0.0),
        "polls": len(t.polls),
        "produced_per_s": len(ids) / t.produce_s if t.produce_s else 0.0,
    }


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run: start the worker, produce for ``opts.latency_s`` seconds, observe."""
    rate = opts.latency_load * CAPACITY_PER_S
    ids = make_ids(max(1, int(rate * opts.latency_s)))
    seed = write_seed_file(workdir / "seed.txt", ids)
    with stack(workdir / "ackworker", seed, ("--latency-ms", str(LATENCY_MS))) as s:
        ensure_group(s.redis)
        worker = s.procs.start("ackworker", ackworker_args(), WORKER.env(s))
        wait_consuming(s, worker)
        timings = asyncio.run(produce_and_observe(s, ids, rate, opts.latency_s + 60))
        if worker.stop() != 0:
            raise BenchError(f"ackworker did not exit 0; see {worker.log}")
    return {
        "n": len(ids),
        "rate_per_s": rate,
        **summarize(timings, ids),
        "target_p99_ms": TARGET_MS,
        "settings": {
            "worker": WORKER.as_dict(),
            "latency_ms": LATENCY_MS,
            "load": opts.latency_load,
        },
    }
