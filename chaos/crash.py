"""Scenario 1, crash: two replicas; one is killed with SIGKILL in the middle of a batch, twice.

The survivor claims the dead replica's pending entries after ``claim_idle_ms`` and finishes.
Figures: numbers submitted again after the crashes (at most what the killed replicas held
in flight) and the time from each kill until every entry it held was settled.
"""

from __future__ import annotations

from pathlib import Path

from chaos.common import expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import Stage, numbers, wait_until
from chaos.report import Mode, Outcome, Scenario

SIZES = {"full": 4000, "reduced": 400}
KILLS = 2
LATENCY_MS = 150


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count = SIZES[mode]
    outcome.injected = (
        f"{count} numbers, 2 replicas, stand-in latency {LATENCY_MS} ms; SIGKILL of a replica"
        f" holding a batch in flight, {KILLS} times (a fresh victim each time)"
    )
    outcome.checked = (
        "invariant (nothing in the stream at the end); survivor exits 0 on SIGTERM;"
        " re-submitted numbers ≤ entries the victims held"
    )
    with Stage(workdir) as stage:
        rig = start_rig(stage, "--latency-ms", str(LATENCY_MS))
        ids = numbers(count, "crash")
        survivor = rig.worker("survivor")
        held_total = 0
        recover_s: list[float] = []
        for round_no in range(KILLS):
            name = f"victim{round_no}"
            victim = rig.worker(name)
            # Each round's numbers arrive once both replicas run, so both take a share.
            rig.push(ids[round_no::KILLS])
            wait_until(
                lambda name=name: len(rig.pending_of(name)) > 0,  # type: ignore[misc]
                timeout_s=30,
                what=f"{name} holding entries",
            )
            wait_until(
                lambda: int(rig.api.stats()["in_flight"]) > 0, timeout_s=10, what="a request"
            )
            victim.kill()
            held = rig.pending_of(name)
            held_total += len(held)
            recover_s.append(
                wait_until(
                    lambda held=held: rig.entries_left(held) == 0,  # type: ignore[misc]
                    timeout_s=60,
                    what=f"entries of {name} settled by the survivor",
                )
            )
        rig.wait_drained(120)
        stop_cleanly(outcome, survivor)
        no_tracebacks(outcome, survivor)
        ledger = rig.ledger(ids)
    expect_invariant(outcome, ledger, resubmit_allowance=held_total)
    outcome.expect(ledger.confirmed >= set(ids), "not every number was confirmed")
    outcome.figure = (
        f"re-sent after the crashes: {ledger.resubmitted} numbers (victims held {held_total});"
        f" recovered in {', '.join(f'{s:.1f}' for s in recover_s)} s (claim_idle_ms 1000)"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("1", "Crash (kill -9 mid-batch, twice)", run)
