"""Scenario ``api-bound``: how close ackworker comes to the API's quota without exceeding it.

The stand-in answers after 50 ms and allows 20 requests/s (more are answered
``Throttling.User``); the worker's rate limit is the same 20, batches are 100, and ``N``
numbers (default 20k) are enqueued before start. Efficiency is the achieved items/s over
the most the quota allows, 20 × 100 = 2000 items/s; every throttling answer the stand-in
gave counts against the worker.
"""

from __future__ import annotations

from pathlib import Path

from bench.contestants import WorkerConfig, ackworker_args, measure
from bench.data import fill_stream, make_ids, write_seed_file
from bench.procs import stack
from bench.scenario import Numbers, Options, Row

NAME = "api-bound"
QUOTA_RPS = 20
LATENCY_MS = 50
WORKER = WorkerConfig(rate_limit=QUOTA_RPS, batch_size=100, concurrency=4)
ROWS = (
    Row("items/s (first to last settle)", ("ackworker", "steady_items_per_s")),
    Row("efficiency: items/s ÷ (20 × 100), after start-up", ("efficiency_steady",), "≥ 0.98", 3),
    Row("efficiency, spawn to last settle", ("efficiency",), "", 3),
    Row("throttling answers", ("ackworker", "throttled"), "0"),
    Row("requests at the stand-in", ("ackworker", "requests")),
)


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run: drain ``opts.api_n`` numbers through the quota."""
    ids = make_ids(opts.api_n)
    seed = write_seed_file(workdir / "seed.txt", ids)
    flags = ("--latency-ms", str(LATENCY_MS), "--quota-rps", str(QUOTA_RPS))
    with stack(workdir / "ackworker", seed, flags) as s:
        fill_stream(s.redis, ids)
        # At the quota the drain takes N / 2000 s; allow twice that and a minute.
        timeout_s = 60 + 2 * len(ids) / (QUOTA_RPS * WORKER.batch_size)
        numbers = measure(s, "ackworker", ackworker_args(), WORKER.env(s), timeout_s=timeout_s)
    most = QUOTA_RPS * WORKER.batch_size
    return {
        "n": len(ids),
        "ackworker": numbers,
        "max_items_per_s": most,
        "efficiency": numbers["items_per_s"] / most,
        "efficiency_steady": numbers["steady_items_per_s"] / most,
        "settings": {"worker": WORKER.as_dict(), "latency_ms": LATENCY_MS, "quota_rps": QUOTA_RPS},
    }
