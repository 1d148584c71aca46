"""Scenario 6, clock skew: the stand-in's clock runs 20 minutes ahead of the worker's.

Every signed request is then refused (``InvalidTimeStamp.Expired``). The worker must log
``api.clock_skew``, keep every entry (nothing confirmed, nothing dead-lettered), and not
loop: over the window it may send one request per sender plus one probe per back-off step
(5, 10, 20, 30 s). Then the clock is set right and everything must settle.
Figure: requests the stand-in saw during the window, against that bound.
"""

from __future__ import annotations

from pathlib import Path

from chaos.common import expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import Stage, hold_for, numbers, wait_until
from chaos.report import Mode, Outcome, Scenario

OFFSET_S = 1200
CONCURRENCY = 4
WINDOW_S = {"full": 40.0, "reduced": 4.0}
COUNT = 60
PROBE_DELAYS_S = (5, 10, 20, 30)


def probe_bound(window_s: float) -> int:
    """Most probes a window may hold: one per back-off step that fits in it."""
    elapsed, probes = 0.0, 0
    for step in range(100):  # bounded: 100 probes is far beyond any window here
        elapsed += PROBE_DELAYS_S[min(step, len(PROBE_DELAYS_S) - 1)]
        if elapsed > window_s:
            break
        probes += 1
    return probes


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    window_s = WINDOW_S[mode]
    bound = CONCURRENCY + probe_bound(window_s) + 1
    outcome.injected = (
        f"stand-in clock {OFFSET_S // 60} min ahead for {window_s:g} s, {COUNT} numbers,"
        f" 1 worker (concurrency {CONCURRENCY}); then the clock is set right"
    )
    outcome.checked = (
        f"api.clock_skew logged; nothing confirmed or dead-lettered while skewed; at most"
        f" {bound} requests in the window (no tight loop); all settle after; invariant"
    )
    with Stage(workdir) as stage:
        rig = start_rig(stage, "--clock-offset-s", str(OFFSET_S))
        worker = rig.worker("w1", ACKWORKER_CONCURRENCY=str(CONCURRENCY))
        ids = numbers(COUNT, "skew")
        rig.api.reset_stats()
        rig.push(ids)
        wait_until(lambda: worker.has("api.clock_skew"), timeout_s=30, what="api.clock_skew")
        hold_for(window_s, 1.0, lambda: None)
        stats = rig.api.stats()
        requests = int(stats["requests_total"])
        kept = rig.backlog()
        with rig.client() as client:
            dead_while = int(client.xlen(rig.keys.dead))
        rig.api.faults(clock_offset_s=0)
        resume_s = wait_until(rig.drained, timeout_s=60, what="settled after the clock was set")
        codes = sorted({str(e.get("code")) for e in worker.named("api.clock_skew")})
        stop_cleanly(outcome, worker)
        no_tracebacks(outcome, worker)
        ledger = rig.ledger(ids)
    expect_invariant(outcome, ledger)
    outcome.expect(requests <= bound, f"{requests} requests in {window_s:g} s, bound {bound}")
    outcome.expect(int(stats["confirmed"]) == 0, "numbers confirmed while the clock was off")
    outcome.expect(kept == COUNT, f"{kept} of {COUNT} entries kept in the stream while skewed")
    outcome.expect(dead_while == 0, f"{dead_while} dead-lettered while skewed")
    outcome.expect(ledger.confirmed >= set(ids), "not every number was confirmed after the fix")
    outcome.figure = (
        f"{requests} requests in {window_s:g} s skewed (bound {bound}; codes"
        f" {', '.join(codes)}); {kept}/{COUNT} entries kept; settled {resume_s:.1f} s after"
        " the clock was set right"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("6", "Clock skew (stand-in 20 min ahead)", run)
