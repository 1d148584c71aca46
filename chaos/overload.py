"""Scenario 7, overload: a producer twice as fast as the rate limit allows, for a while.

The backlog must grow in Redis, not in the worker: its RSS at the end of the window may be
at most 10% (plus 8 MB of allocator slack) above its RSS after warm-up. Nothing is lost (the
backlog is still in the stream, which the invariant allows here), and the worker keeps using
the full rate limit: requests per second at the stand-in ≥ 90% of the limit.
"""

from __future__ import annotations

import time
from pathlib import Path

from chaos.common import Rig, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import POLL_S, Stage, WorkerProc, enqueue, numbers
from chaos.report import Mode, Outcome, Scenario

RATE_LIMIT = 20
BATCH = 20
PRODUCE_PER_S = 2 * RATE_LIMIT * BATCH
WINDOW_S = {"full": 60.0, "reduced": 6.0}
WARM_UP_SHARE = 0.25
RSS_SLACK_BYTES = 8 * 2**20


def _produce(rig: Rig, worker: WorkerProc, ids: list[str], window_s: float) -> dict[str, float]:
    """Feed ``ids`` evenly over the window; RSS and request counts at warm-up and the end."""
    started = time.monotonic()
    sent = 0
    marks: dict[str, float] = {}
    with rig.client() as client:
        while sent < len(ids):
            elapsed = time.monotonic() - started
            due = min(len(ids), int(elapsed * PRODUCE_PER_S))
            if due > sent:
                enqueue(client, rig.keys, [{"id": n} for n in ids[sent:due]])
                sent = due
            if "warm_rss" not in marks and elapsed >= window_s * WARM_UP_SHARE:
                marks["warm_rss"] = worker.rss_bytes()
                marks["warm_requests"] = int(rig.api.stats()["requests_total"])
                marks["warm_at"] = elapsed
            time.sleep(POLL_S)
    marks["end_at"] = time.monotonic() - started
    marks["end_rss"] = worker.rss_bytes()
    marks["end_requests"] = int(rig.api.stats()["requests_total"])
    return marks


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    window_s = WINDOW_S[mode]
    outcome.injected = (
        f"producer at {PRODUCE_PER_S} numbers/s for {window_s:g} s against a rate limit of"
        f" {RATE_LIMIT} req/s × batch {BATCH} ({RATE_LIMIT * BATCH} numbers/s), 1 worker"
    )
    outcome.checked = (
        "backlog grows in Redis; worker RSS at the end ≤ warm-up RSS + 10% + 8 MB; request"
        " rate ≥ 90% of the limit; invariant with the backlog still in the stream"
    )
    ids = numbers(int(window_s * PRODUCE_PER_S), "overload")
    with Stage(workdir) as stage:
        rig = start_rig(stage, "--latency-ms", "20")
        rig.api.seed(ids)
        worker = rig.worker(
            "w1", ACKWORKER_RATE_LIMIT=str(RATE_LIMIT), ACKWORKER_BATCH_SIZE=str(BATCH)
        )
        marks = _produce(rig, worker, ids, window_s)
        backlog = rig.backlog()
        stop_cleanly(outcome, worker)
        no_tracebacks(outcome, worker)
        ledger = rig.ledger(ids, stream_allowed=True)
    expect_invariant(outcome, ledger)
    rate = (marks["end_requests"] - marks["warm_requests"]) / (marks["end_at"] - marks["warm_at"])
    growth = marks["end_rss"] / marks["warm_rss"] - 1
    outcome.expect(backlog >= len(ids) // 3, f"backlog only {backlog} at the end")
    outcome.expect(
        marks["end_rss"] <= marks["warm_rss"] * 1.1 + RSS_SLACK_BYTES,
        f"RSS grew {growth:.0%} with the backlog",
    )
    outcome.expect(rate >= 0.9 * RATE_LIMIT, f"only {rate:.1f} requests/s of {RATE_LIMIT}")
    outcome.figure = (
        f"backlog {backlog} entries at the end; worker RSS {marks['warm_rss'] / 2**20:.0f} →"
        f" {marks['end_rss'] / 2**20:.0f} MB ({growth:+.1%}); {rate:.1f} requests/s of a"
        f" {RATE_LIMIT}/s limit"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("7", "Overload (producer 2× the rate limit)", run)
