"""Scenario 2, Redis restart: Redis is killed (SIGKILL) mid-run and started again.

With AOF (``--appendonly yes --appendfsync everysec``) the workers back off, reconnect and
finish; nothing Redis kept is lost. A crash may cost Redis its last second of writes: a
settlement it forgot puts a confirmed number back in the stream, and the worker sends it
again (the stand-in answers 0, the batch goes to reconcile). Those numbers are counted right
after the restart and are the only re-submissions allowed.

Without persistence Redis comes back empty: the stream, the group, the dead letters and the
dedupe memory are gone, and the numbers that were only in Redis are lost with it. That is
outside the invariant; the scenario records what the worker does and logs, and whether it
takes new work afterwards.
"""

from __future__ import annotations

import signal
from pathlib import Path

from chaos.common import Rig, Timer, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import Stage, WorkerProc, numbers, wait_until
from chaos.report import Mode, Outcome, Scenario

SIZES = {"full": 6000, "reduced": 600}
RATE_LIMITS = {"full": "40", "reduced": "20"}
"""Requests/s (batch 20): slow enough that Redis is killed seconds into the run, with
several AOF fsyncs behind it, not in its first second."""
LATENCY_MS = 40
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")


def _confirmed_at_least(rig: Rig, count: int) -> bool:
    return int(rig.api.stats()["confirmed"]) >= count


def _all_saw_outage(workers: list[WorkerProc]) -> bool:
    return all(w.has("redis.unavailable") or w.has("batch.abandoned") for w in workers)


def _crash_and_restart(rig: Rig, workers: list[WorkerProc]) -> float:
    """SIGKILL Redis, wait until every worker noticed, start it again; the outage in s."""
    outage = Timer()
    rig.redis.signal(signal.SIGKILL)
    rig.redis.proc.wait(timeout=10)
    wait_until(lambda: _all_saw_outage(workers), timeout_s=30, what="workers see Redis down")
    rig.redis.restart()
    return outage()


def _with_aof(outcome: Outcome, workdir: Path, count: int, rate: str) -> str:
    with Stage(workdir / "aof") as stage:
        rig = start_rig(stage, "--latency-ms", str(LATENCY_MS), redis_args=AOF)
        ids = numbers(count, "redis-aof")
        workers = [rig.worker(n, ACKWORKER_RATE_LIMIT=rate) for n in ("w1", "w2")]
        rig.push(ids)
        wait_until(lambda: _confirmed_at_least(rig, count // 2), timeout_s=60, what="progress")
        outage_s = _crash_and_restart(rig, workers)
        # Numbers confirmed at the stand-in whose entries Redis still holds: their settlement
        # was lost with the last second of writes, or never happened (request in flight).
        with rig.client() as client:
            rows = client.xrange(rig.keys.tasks)
        back = {fields[b"id"].decode() for _, fields in rows} & rig.api.confirmed()
        resumed = Timer()
        before = int(rig.api.stats()["confirmed"])
        wait_until(
            lambda: _confirmed_at_least(rig, before + 1), timeout_s=60, what="sending resumed"
        )
        resume_s = resumed()
        rig.wait_drained(120)
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, *workers)
        reconnects = sum(len(w.named("redis.unavailable")) for w in workers)
        ledger = rig.ledger(ids)
    expect_invariant(outcome, ledger, resubmit_allowance=len(back))
    outcome.note(f"with AOF: {ledger.summary()}; redis.unavailable logged {reconnects} times")
    return (
        f"AOF: down {outage_s:.1f} s, sending resumed {resume_s:.1f} s after the restart;"
        f" {len(back)} confirmed numbers came back with Redis, {ledger.resubmitted} re-sent"
    )


def _without_persistence(outcome: Outcome, workdir: Path, count: int) -> str:
    with Stage(workdir / "volatile") as stage:
        rig = start_rig(stage, "--latency-ms", str(LATENCY_MS))
        ids = numbers(count, "redis-volatile")
        worker = rig.worker("w1")
        rig.push(ids)
        wait_until(lambda: _confirmed_at_least(rig, count // 4), timeout_s=60, what="progress")
        _crash_and_restart(rig, [worker])
        confirmed_at_crash = rig.api.confirmed()
        lost = [n for n in ids if n not in confirmed_at_crash]
        # A producer that follows the input contract with a plain XADD recreates the stream,
        # not the group: the worker has to notice that its group is gone.
        later = numbers(max(20, count // 20), "redis-volatile-after")
        rig.api.seed(later)
        with rig.client() as client:
            for number in later:
                client.xadd(rig.keys.tasks, {"id": number})
        wait_until(
            lambda: rig.drained() or not worker.alive(),
            timeout_s=30,
            what="numbers XADDed after the empty restart settled, or the worker gone",
        )
        took_new = rig.drained()
        alive = worker.alive()
        events = sorted({str(e.get("event")) for e in worker.events()} - {"batch.settled"})
        if alive:
            stop_cleanly(outcome, worker)
        ledger = rig.ledger(later, stream_allowed=True)
    errors = [line.strip() for line in worker.output().splitlines() if "Error:" in line]
    last_line = errors[-1] if errors else worker.tail()
    outcome.expect(alive, f"without persistence the worker died: {last_line[:200]}")
    outcome.expect(took_new, "without persistence the worker took no new work after the restart")
    outcome.expect(not ledger.lost, f"{len(ledger.lost)} numbers enqueued after the restart lost")
    outcome.note(
        f"without persistence: {len(lost)} of {count} numbers were only in Redis and were lost"
        f" with it (outside the invariant); worker events seen: {', '.join(events)}"
    )
    return f"no persistence: {len(lost)} lost with Redis (expected), new work taken: {took_new}"


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count = SIZES[mode]
    outcome.injected = (
        f"{count} numbers, 2 replicas; redis-server SIGKILLed once half was confirmed,"
        " restarted once every worker had noticed; once with AOF everysec, once without"
        " persistence (then new numbers XADDed plainly)"
    )
    outcome.checked = (
        "AOF: workers stay up, reconnect, finish; invariant; re-sent only numbers whose"
        " settlement Redis lost. No persistence: worker survives, takes work enqueued after"
        " the restart"
    )
    figures = [
        _with_aof(outcome, workdir, count, RATE_LIMITS[mode]),
        _without_persistence(outcome, workdir, count),
    ]
    outcome.figure = "; ".join(figures)


SCENARIO = Scenario("2", "Redis restart (AOF, and no persistence)", run)
