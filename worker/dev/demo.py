"""``python -m worker.dev.demo`` (``make demo``): the main job end to end, on embedded defaults.

It starts a throwaway ``redis-server`` on a free loopback port (never 6379, nothing saved) and
the Domain API stand-in (``ackworker mock-api``) with mild faults, seeded with generated
task-detail numbers. It enqueues those numbers with ``ackworker enqueue``, followed by some
duplicates and some valid numbers the stand-in does not know, and writes malformed entries
raw with XADD. Then it runs ``ackworker run`` until ``XLEN demo:tasks`` is 0, stops it with
SIGTERM, and prints what happened, read from the stand-in's admin stats, the worker's
``worker.stopped`` log line and the ``demo:dead`` and ``demo:reconcile`` streams.

``make demo`` then runs the closed loop, :mod:`worker.dev.closed_loop`, whose ``ackworker poll``
finds the results itself. Both run on :mod:`worker.dev.demo_setup` (the servers, processes
and the frame that stops them); the workload is :mod:`worker.dev.demo_workload`, the summary
and verdict :mod:`worker.dev.demo_summary`.

Every process it started is stopped on the way out: on success, on failure and on Ctrl-C.
Exit code 0 when every promise held, 1 with a message otherwise, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from worker.dev.demo_setup import (
    TASKS,
    start_ackworker,
    start_mock_api,
    start_redis,
    stop_cleanly,
    supervise,
    wait_while_running,
    worker_env,
)
from worker.dev.demo_summary import Summary, problems, report, summarize
from worker.dev.demo_workload import MALFORMED as MALFORMED
from worker.dev.demo_workload import Workload, backlog, enqueue, write_malformed
from worker.dev.sandbox import Child, Children


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The demo's options; every one has a default."""
    p = argparse.ArgumentParser(
        prog="python -m worker.dev.demo", description=__doc__.splitlines()[0]
    )
    p.add_argument("--count", type=int, default=3000, help="seeded numbers (default 3000)")
    p.add_argument("--duplicates", type=int, default=None, help="default: 5%% of --count")
    p.add_argument("--unknown", type=int, default=20, help="valid numbers the API does not know")
    p.add_argument("--timeout-s", type=float, default=120.0, help="deadline for the drain")
    p.add_argument("--log-dir", type=Path, default=Path(".demo"), help="default: ./.demo")
    p.add_argument("--json-out", type=Path, default=None, help="also write the summary as JSON")
    args = p.parse_args(argv)
    if args.count < 1 or args.unknown < 0 or (args.duplicates or 0) < 0:
        p.error("--count must be at least 1; --duplicates and --unknown not negative")
    return args


def run_worker(
    procs: Children, env: dict[str, str], client: redis.Redis, log: Path, timeout_s: float
) -> tuple[Child, float]:
    """Run ``ackworker run`` until the backlog is 0, then SIGTERM it; it and the seconds
    it took."""
    started = time.monotonic()
    worker = start_ackworker(procs, "run", "the worker (ackworker run)", log, env)
    wait_while_running(
        [worker],
        lambda: backlog(client) == 0,
        timeout_s=timeout_s,
        what=f"{TASKS} to drain (worker log: {log})",
    )
    busy_s = time.monotonic() - started
    stop_cleanly(worker)
    return worker, busy_s


def run_demo(args: argparse.Namespace, workdir: Path, procs: Children) -> Summary:
    """Everything between starting the servers and reading the outcome."""
    started = time.monotonic()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    redis_url = start_redis(procs, workdir)
    print(f"redis-server  {redis_url} (throwaway)", flush=True)
    api, seeded = start_mock_api(procs, workdir, args.log_dir / "mock-api.log", args.count)
    print(f"stand-in      {api.url}, {len(seeded)} numbers seeded, mild faults", flush=True)
    dupes = args.count // 20 if args.duplicates is None else args.duplicates
    work = Workload.plan(seeded, dupes, args.unknown)
    env = worker_env(redis_url, api.url)
    client = redis.Redis.from_url(redis_url)
    try:
        write_malformed(client)
        enqueue(env, work.stream_order())
        print(f"stream        {backlog(client)} entries on {TASKS}; running ackworker run")
        log = (args.log_dir / "worker.log").resolve()
        worker, drain_s = run_worker(procs, env, client, log, args.timeout_s)
        summary = summarize(client, api, work, worker, drain_s)
    finally:
        client.close()
    summary.problems = problems(summary, work)
    summary.elapsed_s = time.monotonic() - started
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the process exit code."""
    args = parse_args(argv)
    return supervise(
        "demo",
        lambda tmp, procs: run_demo(args, tmp, procs),
        lambda summary: report(summary, args.json_out),
    )


if __name__ == "__main__":
    sys.exit(main())
