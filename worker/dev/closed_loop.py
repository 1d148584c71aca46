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
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from worker.dev import demo
from worker.dev.demo import DemoError, Processes

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
    info: dict[str, Any] = client.xinfo_stream(demo.TASKS)  # type: ignore[assignment]
    return int(info["entries-added"])


def _closed(url: str, client: redis.Redis) -> bool | None:
    return True if demo.admin_stats(url)["pending"] == 0 and demo.backlog(client) == 0 else None


def run_loop(
    procs: Processes, env: dict[str, str], client: redis.Redis, url: str, args: argparse.Namespace
) -> tuple[float, list[Path]]:
    """Run the poller and a worker until nothing is pending anywhere; stop both."""
    logs = [(args.log_dir / f"loop-{name}.log").resolve() for name in ("poll", "worker")]
    started = time.monotonic()
    poller = procs.start([sys.executable, "-m", "worker", "poll"], out=logs[0], env=env)
    worker = procs.start([sys.executable, "-m", "worker", "run"], out=logs[1], env=env)

    def closed() -> bool | None:
        demo.check_alive(poller, "the poller (ackworker poll)", logs[0])
        demo.check_alive(worker, "the worker (ackworker run)", logs[1])
        return _closed(url, client)

    demo.poll(closed, timeout_s=args.timeout_s, what=f"the stand-in to hold nothing (logs: {logs})")
    loop_s = time.monotonic() - started
    for proc, name, log in ((poller, "poller", logs[0]), (worker, "worker", logs[1])):
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=demo.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DemoError(f"the {name} did not stop within {demo.STOP_TIMEOUT_S:g} s") from None
        if code != 0:
            raise DemoError(f"the {name} exited with code {code} after SIGTERM; see {log}")
    return loop_s, logs


def summarize(
    client: redis.Redis, url: str, held: int, loop_s: float, logs: list[Path]
) -> LoopSummary:
    """The outcome from the stand-in, the two logs and the stream."""
    cycles = [e for e in demo.read_events(logs[0]) if e["event"] == "poll.cycle"]
    stopped = [e for e in demo.read_events(logs[1]) if e["event"] == "worker.stopped"]
    stats = demo.admin_stats(url)
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
            f"stream        {s.stream_added} entries ever added to {demo.TASKS}",
            f"acknowledged  {s.confirmed} confirmed at the stand-in; worker.stopped says "
            f"{s.worker.get('confirmed')}",
            f"unacked       {s.held} before, {s.pending_after} after",
            f"requests      {api.get('requests_by_action')}; error answers "
            f"{api.get('errors_by_code') or 'none'}",
            f"elapsed       {s.loop_s:.1f} s from starting both to nothing pending",
        ]
    )


def run_closed_loop(args: argparse.Namespace, workdir: Path, procs: Processes) -> LoopSummary:
    """Everything between starting the servers and reading the outcome."""
    args.log_dir.mkdir(parents=True, exist_ok=True)
    redis_url = demo.start_redis(procs, workdir)
    log = args.log_dir / "loop-mock-api.log"
    url, seeded = demo.start_mock_api(procs, workdir, log, args.count)
    print(f"closed loop   {url} holds {len(seeded)} results; running poll and run", flush=True)
    env = demo.clean_env(
        ACKWORKER_REDIS_URL=redis_url,
        ACKWORKER_ENDPOINT=url,
        ALIBABA_CLOUD_ACCESS_KEY_ID=demo.ACCESS_KEY_ID,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=demo.ACCESS_KEY_SECRET,
        **demo.WORKER_SETTINGS,
        **LOOP_SETTINGS,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        loop_s, logs = run_loop(procs, env, client, url, args)
        summary = summarize(client, url, len(seeded), loop_s, logs)
    finally:
        client.close()
    summary.problems = problems(summary)
    return summary


def report(summary: LoopSummary, json_out: Path | None) -> int:
    """Print the summary (and write it as JSON); 0 if every promise held, else 1."""
    ok = "every held result polled once, acknowledged, none left pending"
    return demo.conclude(
        "closed loop", render(summary), asdict(summary), summary.problems, json_out, ok
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the closed loop; the process exit code."""
    args = parse_args(argv)
    return demo.supervise(
        "closed loop",
        lambda tmp, procs: run_closed_loop(args, tmp, procs),
        lambda summary: report(summary, args.json_out),
    )


if __name__ == "__main__":
    sys.exit(main())
