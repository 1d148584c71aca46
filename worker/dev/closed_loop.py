"""``python -m worker.dev.closed_loop`` (the second half of ``make demo``): the closed loop.

The stand-in holds finished task results that nobody has put on the stream. ``ackworker poll``
finds them with ``PollTaskResult`` and enqueues them, ``ackworker run`` acknowledges them,
and the stand-in's count of unacknowledged results falls to zero. Both run as real processes
side by side, against a throwaway ``redis-server`` and the stand-in with the same mild faults
as ``python -m worker.dev.demo`` (so some polls are throttled and retried too).

The summary shows the stand-in's unacknowledged count before and after, the poller's cycles
and what they enqueued, and the stream's lifetime XADD count, which must equal the number of
results held: nothing was enqueued twice. Exit code 0 when every promise held, 1 with a
message otherwise, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from worker.dev.demo_summary import conclude
from worker.dev.demo_workload import backlog
from worker.dev.sandbox import Child, Children, MockApiProcess

LOOP_SETTINGS = {
    "ACKWORKER_POLL_INTERVAL_S": "0.5",
    "ACKWORKER_POLL_PAGE_SIZE": "250",
    "ACKWORKER_POLL_MAX_PAGES": "4",
}


@dataclass(slots=True)
class LoopSummary:
    """What the closed loop saw; also written as JSON with ``--json-out``."""

    held: int
    pending_after: int
    confirmed: int
    cycles: int
    enqueued: int
    known: int
    stream_added: int
    worker: dict[str, Any]
    stand_in: dict[str, Any]
    loop_s: float
    problems: list[str]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The closed loop's options; every one has a default."""
    p = argparse.ArgumentParser(
        prog="python -m worker.dev.closed_loop", description=__doc__.splitlines()[0]
    )
    p.add_argument("--count", type=int, default=2000, help="results held (default 2000)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="deadline for the loop")
    p.add_argument("--log-dir", type=Path, default=Path(".demo"), help="default: ./.demo")
    p.add_argument("--json-out", type=Path, default=None, help="also write the summary as JSON")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    return args


def stream_added(client: redis.Redis) -> int:
    """Entries ever added to the task stream (``XINFO STREAM``'s ``entries-added``)."""
    info: dict[str, Any] = client.xinfo_stream(TASKS)  # type: ignore[assignment]
    return int(info["entries-added"])


def run_loop(
    procs: Children,
    env: dict[str, str],
    client: redis.Redis,
    api: MockApiProcess,
    args: argparse.Namespace,
) -> tuple[float, list[Child]]:
    """Run the poller and a worker until nothing is pending anywhere; stop both."""
    logs = [(args.log_dir / f"loop-{name}.log").resolve() for name in ("poll", "worker")]
    started = time.monotonic()
    poller = start_ackworker(procs, "poll", "the poller (ackworker poll)", logs[0], env)
    worker = start_ackworker(procs, "run", "the worker (ackworker run)", logs[1], env)
    wait_while_running(
        [poller, worker],
        lambda: api.stats()["pending"] == 0 and backlog(client) == 0,
        timeout_s=args.timeout_s,
        what=f"the stand-in to hold nothing (logs: {logs})",
    )
    loop_s = time.monotonic() - started
    for child in (poller, worker):
        stop_cleanly(child)
    return loop_s, [poller, worker]


def summarize(
    client: redis.Redis, api: MockApiProcess, held: int, loop_s: float, children: list[Child]
) -> LoopSummary:
    """The outcome from the stand-in, the two logs and the stream."""
    poller, worker = children
    cycles = [e for e in poller.events() if e["event"] == "poll.cycle"]
    stopped = [e for e in worker.events() if e["event"] == "worker.stopped"]
    stats = api.stats()
    return LoopSummary(
        held=held,
        pending_after=int(stats["pending"]),
        confirmed=int(stats["confirmed"]),
        cycles=len(cycles),
        enqueued=sum(int(e["enqueued"]) for e in cycles),
        known=sum(int(e["known"]) for e in cycles),
        stream_added=stream_added(client),
        worker=stopped[-1] if stopped else {},
        stand_in=stats,
        loop_s=loop_s,
        problems=[],
    )


def problems(s: LoopSummary) -> list[str]:
    """The closed loop's promises that did not hold (empty when all did)."""
    found: list[str] = []
    if s.pending_after != 0:
        found.append(f"the stand-in still holds {s.pending_after} unacknowledged results")
    if s.confirmed != s.held:
        found.append(f"the stand-in confirmed {s.confirmed} of {s.held}")
    if s.enqueued != s.held:
        found.append(f"the poller enqueued {s.enqueued} of {s.held}")
    handed_back = int(s.worker.get("handed_back") or 0)
    if s.stream_added - handed_back != s.held:
        found.append(f"{s.stream_added - handed_back} entries added for {s.held} results")
    if s.worker.get("duplicates"):
        found.append(f"the worker settled {s.worker['duplicates']} duplicates")
    return found


def render(s: LoopSummary) -> str:
    """The human summary."""
    api = s.stand_in
    return "\n".join(
        [
            f"held          {s.held} finished results at the stand-in, none enqueued by hand",
            f"polled        {s.cycles} poll.cycle events: {s.enqueued} enqueued, "
            f"{s.known} seen again and skipped",
            f"stream        {s.stream_added} entries ever added to {TASKS}",
            f"acknowledged  {s.confirmed} confirmed at the stand-in; worker.stopped says "
            f"{s.worker.get('confirmed')}",
            f"unacked       {s.held} before, {s.pending_after} after",
            f"requests      {api.get('requests_by_action')}; error answers "
            f"{api.get('errors_by_code') or 'none'}",
            f"elapsed       {s.loop_s:.1f} s from starting both to nothing pending",
        ]
    )


def run_closed_loop(args: argparse.Namespace, workdir: Path, procs: Children) -> LoopSummary:
    """Everything between starting the servers and reading the outcome."""
    args.log_dir.mkdir(parents=True, exist_ok=True)
    redis_url = start_redis(procs, workdir)
    log = args.log_dir / "loop-mock-api.log"
    api, seeded = start_mock_api(procs, workdir, log, args.count)
    print(f"closed loop   {api.url} holds {len(seeded)} results; running poll and run", flush=True)
    env = worker_env(redis_url, api.url, **LOOP_SETTINGS)
    client = redis.Redis.from_url(redis_url)
    try:
        loop_s, children = run_loop(procs, env, client, api, args)
        summary = summarize(client, api, len(seeded), loop_s, children)
    finally:
        client.close()
    summary.problems = problems(summary)
    return summary


def report(summary: LoopSummary, json_out: Path | None) -> int:
    """Print the summary (and write it as JSON); 0 if every promise held, else 1."""
    ok = "every held result polled once, acknowledged, none left pending"
    return conclude("closed loop", render(summary), asdict(summary), summary.problems, json_out, ok)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the closed loop; the process exit code."""
    args = parse_args(argv)
    return supervise(
        "closed loop",
        lambda tmp, procs: run_closed_loop(args, tmp, procs),
        lambda summary: report(summary, args.json_out),
    )


if __name__ == "__main__":
    sys.exit(main())
