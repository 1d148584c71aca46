"""Scenario 10, poller crash: ``ackworker poll`` is killed with SIGKILL mid-cycle, repeatedly.

The stand-in holds finished results that nobody enqueued. A poller pages through them (small
pages and some stand-in latency, so one cycle spans many requests). Each time it has added at
least one page in its current life it is killed with SIGKILL, in the middle of its cycle, and
a fresh one is started: every new life reads again from page 1 the results the earlier lives
enqueued, which nobody has acknowledged yet. A last poller completes a cycle; then two
workers start and acknowledge while it keeps polling, until the stand-in holds nothing.

Checked: the last poller's first cycle found exactly the results the killed ones had
enqueued as known and enqueued only the rest; the stand-in ends with nothing pending; every
held number is confirmed (nothing lost); no number was enqueued twice: the task stream's
lifetime XADD count (``XINFO STREAM`` ``entries-added``, less the workers' hand-backs) equals
the number of results held, and the workers settled no duplicates; the last poller exits 0
on SIGTERM.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from chaos.common import Rig, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import ChaosError, Stage, WorkerProc, numbers, wait_until
from chaos.report import Mode, Outcome, Scenario

SIZES = {"full": 3000, "reduced": 300}
KILLS = {"full": 5, "reduced": 3}
PAGE_SIZE = {"full": 50, "reduced": 20}
LATENCY_MS = 40


class PollerProc(WorkerProc):
    """``python -m worker poll``; its log is read as a worker's is."""

    START_EVENT = "poll.started"

    def __init__(self, workdir: Path, name: str, env: Mapping[str, str]) -> None:
        super().__init__(workdir, name, env, command="poll")


def start_poller(stage: Stage, name: str, env: Mapping[str, str]) -> PollerProc:
    poller = PollerProc(stage.workdir, name, env)
    stage.adopt(poller)
    wait_until(poller.started, timeout_s=30, what=f"{name} started")
    return poller


def entries_added(rig: Rig) -> int:
    """XADDs the task stream has seen in its lifetime (0 before it exists)."""
    with rig.client() as client:
        try:
            info = client.xinfo_stream(rig.keys.tasks)
        except redis.ResponseError:
            return 0
    return int(info["entries-added"])


def _kill_mid_cycle(rig: Rig, poller: PollerProc) -> int:
    """SIGKILL ``poller`` as soon as it has added a page; XADDs counted at that moment."""
    before = entries_added(rig)
    wait_until(
        lambda: entries_added(rig) > before or not poller.alive(),
        timeout_s=30,
        what=f"{poller.name} enqueuing a page",
    )
    if not poller.alive():
        raise ChaosError(f"{poller.name} exited before it was killed: {poller.tail()}")
    poller.kill()
    return entries_added(rig)


def _totals(workers: list[WorkerProc], field: str) -> int:
    return sum(int(w.named("worker.stopped")[-1].get(field) or 0) for w in workers)


def _first_cycle(poller: PollerProc) -> dict[str, Any]:
    wait_until(lambda: poller.has("poll.cycle"), timeout_s=60, what=f"{poller.name}'s first cycle")
    return poller.named("poll.cycle")[0]


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count, kills = SIZES[mode], KILLS[mode]
    outcome.injected = (
        f"the stand-in holds {count} results, latency {LATENCY_MS} ms; pages of"
        f" {PAGE_SIZE[mode]}; SIGKILL of the poller mid-cycle {kills} times, each restarted;"
        " then 2 workers acknowledge while the last poller keeps polling"
    )
    outcome.checked = (
        "restarted poller skips exactly what the killed ones enqueued; stand-in pending 0;"
        " every held number confirmed; stream XADDs (less hand-backs) = results held, no"
        " duplicates settled; invariant; last poller exits 0 on SIGTERM"
    )
    with Stage(workdir) as stage:
        rig = start_rig(stage, "--latency-ms", str(LATENCY_MS))
        ids = numbers(count, "poller-crash")
        rig.api.seed(ids)
        env = rig.env(
            "poller",
            ACKWORKER_POLL_PAGE_SIZE=str(PAGE_SIZE[mode]),
            ACKWORKER_POLL_MAX_PAGES="1000",
            ACKWORKER_POLL_INTERVAL_S="0.2",
        )
        at_kills = [
            _kill_mid_cycle(rig, start_poller(stage, f"poller{n}", env)) for n in range(kills)
        ]
        last = start_poller(stage, "poller-last", env)
        first = _first_cycle(last)
        workers = [rig.worker("w1"), rig.worker("w2")]
        settled_s = wait_until(
            lambda: int(rig.api.stats()["pending"]) == 0 and rig.drained(),
            timeout_s=120,
            what="the stand-in holding nothing and the stream drained",
        )
        last.proc.terminate()
        code = last.wait_exit(30)
        outcome.expect(code == 0, f"the last poller exited {code} after SIGTERM: {last.tail()}")
        outcome.expect(last.has("poll.stopped"), "the last poller logged no poll.stopped")
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, last, *workers)
        added = entries_added(rig) - _totals(workers, "handed_back")
        duplicates = _totals(workers, "duplicates")
        pending = int(rig.api.stats()["pending"])
        ledger = rig.ledger(ids)
    expect_invariant(outcome, ledger)
    outcome.expect(
        (first["known"], first["enqueued"]) == (at_kills[-1], count - at_kills[-1]),
        f"after the kills ({at_kills[-1]} enqueued) the first cycle found {first['known']}"
        f" known and enqueued {first['enqueued']}",
    )
    outcome.expect(pending == 0, f"the stand-in still holds {pending} results")
    outcome.expect(ledger.confirmed >= set(ids), "not every held number was confirmed")
    outcome.expect(added == count, f"{added} entries enqueued for {count} results")
    outcome.expect(duplicates == 0, f"workers settled {duplicates} duplicate entries")
    outcome.figure = (
        f"{count} results, {added} enqueued; XADDs at the kills {at_kills}; the last"
        f" poller's first cycle skipped {first['known']} as known; all acknowledged"
        f" {settled_s:.1f} s after the workers started"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("10", "Poller crash (kill -9 mid-cycle, repeatedly)", run)
