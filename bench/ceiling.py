"""Scenario ``ceiling``: how fast ackworker drains a backlog when nothing else holds it back.

The stand-in answers at once with no quota, the rate limit is 100000 requests/s, batches are
100 and ``N`` numbers (default 200k) are enqueued before start. In the same run the bare
reference loop (:mod:`bench.bare_loop`) drains the same numbers on a fresh Redis and
stand-in, so the cost of ackworker's machinery is a ratio measured minutes apart, not days.
The order alternates between runs, so a drift in the machine's load favours neither.
"""

from __future__ import annotations

from pathlib import Path

from bench.contestants import WorkerConfig, ackworker_args, bare_loop_args, measure
from bench.data import fill_stream, make_ids, write_seed_file
from bench.measure import ratio
from bench.procs import Stack, clean_env, stack
from bench.scenario import Numbers, Options, Row

NAME = "ceiling"
ROWS = (
    Row("ackworker items/s (spawn to last settle)", ("ackworker", "items_per_s"), "≥ 100000"),
    Row("ackworker items/s (first to last settle)", ("ackworker", "steady_items_per_s")),
    Row("ackworker CPU µs/item (whole process)", ("ackworker", "cpu_us_per_item"), "", 2),
    Row("ackworker CPU µs/item after start-up", ("ackworker", "cpu_us_per_item_steady"), "≤ 8", 2),
    Row("ackworker peak RSS MB", ("ackworker", "peak_rss_mb"), "", 1),
    Row("bare loop items/s (spawn to last settle)", ("bare_loop", "items_per_s")),
    Row("bare loop CPU µs/item (after start-up)", ("bare_loop", "cpu_us_per_item_steady"), "", 2),
    Row("ackworker ÷ bare loop, items/s", ("ratios", "items_per_s"), "≥ 0.5", 2),
    Row("ackworker ÷ bare loop, CPU/item", ("ratios", "cpu_us_per_item_steady"), "≤ 2", 2),
)
WORKER = WorkerConfig(rate_limit=100_000, batch_size=100, concurrency=8)


def timeout_s(count: int) -> float:
    """Generous bound on one drain: a minute plus 1 ms per number."""
    return 60.0 + count / 1000


def run_ackworker(s: Stack, count: int) -> Numbers:
    """Drain ``count`` pre-enqueued numbers with ``ackworker run``."""
    return measure(s, "ackworker", ackworker_args(), WORKER.env(s), timeout_s=timeout_s(count))


def run_bare_loop(s: Stack, count: int) -> Numbers:
    """Drain ``count`` pre-enqueued numbers with the bare loop (8 in flight)."""
    args = bare_loop_args(s, batch_size=WORKER.batch_size, in_flight=8)
    return measure(s, "bare_loop", args, clean_env(), timeout_s=timeout_s(count))


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run: both contestants on the same numbers, each on a fresh stack."""
    ids = make_ids(opts.ceiling_n)
    seed = write_seed_file(workdir / "seed.txt", ids)
    contestants = [("ackworker", run_ackworker), ("bare_loop", run_bare_loop)]
    if index % 2:
        contestants.reverse()
    result: Numbers = {"n": len(ids), "order": [name for name, _ in contestants]}
    for name, contest in contestants:
        with stack(workdir / name, seed) as s:
            fill_stream(s.redis, ids)
            result[name] = contest(s, len(ids))
    ack, bare = result["ackworker"], result["bare_loop"]
    result["ratios"] = {
        key: ratio(ack[key], bare[key])
        for key in ("items_per_s", "steady_items_per_s", "cpu_us_per_item_steady")
    }
    result["settings"] = {"worker": WORKER.as_dict(), "bare_loop_in_flight": 8}
    return result
