"""Scenario ``backlog``: memory while working through a large backlog (default 1M numbers).

All numbers are enqueued before the worker starts (rate limit 100000, batch 100, no API
latency). The worker's RSS is sampled every 100 ms: at the first settle ("start"), its
high-water mark ("peak") and just before the last settle ("end"); a flat line means memory
does not grow with the backlog. Redis's share is the dedupe memory of the confirmed numbers:
``MEMORY USAGE`` summed over every ``bench:seen:*`` key, and ``used_memory`` against the
empty server for comparison.
"""

from __future__ import annotations

from pathlib import Path

import redis

from bench.contestants import (
    WorkerConfig,
    ackworker_args,
    admin_stats,
    drain_backlog,
    summarize,
)
from bench.data import KEYS, fill_stream, make_ids, write_seed_file
from bench.measure import MB, Drain, ProcWatch
from bench.procs import BenchError, stack
from bench.scenario import Numbers, Options, Row

NAME = "backlog"
WORKER = WorkerConfig(rate_limit=100_000, batch_size=100, concurrency=8)
ROWS = (
    Row("worker RSS at first settle MB", ("rss_start_mb",), "", 1),
    Row("worker RSS peak MB", ("rss_peak_mb",), "≤ 100", 1),
    Row("worker RSS at last settle MB", ("rss_end_mb",), "", 1),
    Row("RSS growth first → last settle MB", ("rss_growth_mb",), "≈ 0 (flat)", 1),
    Row("items/s (spawn to last settle)", ("ackworker", "items_per_s")),
    Row("dedupe memory MB (MEMORY USAGE)", ("dedupe_mb",), "", 1),
    Row("dedupe bytes per confirmed number", ("dedupe_bytes_per_number",), "", 1),
    Row("Redis used_memory growth MB", ("used_memory_growth_mb",), "", 1),
)


def used_memory(client: redis.Redis) -> int:
    """``INFO memory`` ``used_memory``, bytes."""
    info: dict[str, int] = client.info("memory")  # type: ignore[assignment]
    return int(info["used_memory"])


def dedupe_memory(client: redis.Redis) -> tuple[int, int]:
    """``MEMORY USAGE`` (all samples) summed over the dedupe keys; (bytes, keys)."""
    total = keys = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{KEYS.seen_prefix}*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            total += _usage(client, batch)
            keys, batch = keys + len(batch), []
    return total + _usage(client, batch), keys + len(batch)


def _usage(client: redis.Redis, keys: list[bytes]) -> int:
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(n or 0) for n in pipe.execute())


def rss_profile(drain: Drain, watch: ProcWatch) -> Numbers:
    """RSS at the first and last settle, the peak, and a series of about one sample a second."""
    working = [rss for t, rss in watch.rss_samples if drain.first_settle_s <= t <= drain.drained_s]
    if not working:
        raise BenchError("no RSS sample while the worker was settling")
    series = [
        [round(t - drain.spawned_s, 2), round(rss / MB, 1)] for t, rss in watch.rss_samples[::10]
    ]
    return {
        "rss_start_mb": working[0] / MB,
        "rss_peak_mb": watch.peak / MB,
        "rss_end_mb": working[-1] / MB,
        "rss_growth_mb": (working[-1] - working[0]) / MB,
        "rss_series_mb": series,
    }


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run: enqueue ``opts.backlog_n`` numbers, drain them, read the memory."""
    ids = make_ids(opts.backlog_n)
    seed = write_seed_file(workdir / "seed.txt", ids)
    with stack(workdir / "ackworker", seed) as s:
        empty = used_memory(s.redis)
        fill_stream(s.redis, ids)
        filled = used_memory(s.redis)
        timeout_s = 120 + len(ids) / 1000
        drain, watch = drain_backlog(
            s, "ackworker", ackworker_args(), WORKER.env(s), timeout_s=timeout_s
        )
        numbers = summarize(drain, watch, admin_stats(s.api_url))
        dedupe_bytes, dedupe_keys = dedupe_memory(s.redis)
        after = used_memory(s.redis)
    return {
        "n": len(ids),
        "ackworker": numbers,
        **rss_profile(drain, watch),
        "dedupe_mb": dedupe_bytes / MB,
        "dedupe_keys": dedupe_keys,
        "dedupe_bytes_per_number": dedupe_bytes / max(1, numbers["confirmed"]),
        "used_memory_empty_mb": empty / MB,
        "used_memory_filled_mb": filled / MB,
        "used_memory_after_mb": after / MB,
        "used_memory_growth_mb": (after - empty) / MB,
        "settings": {"worker": WORKER.as_dict()},
    }
