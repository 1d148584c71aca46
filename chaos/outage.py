"""Scenario 14, API outage: the endpoint is away for a while, in three shapes, then back.

Two replicas work through a backlog with the endpoint behind a fault-injecting TCP proxy
(``python -m worker.dev.faultproxy``). Mid-run the endpoint goes away: connections
*refused* (the proxy stops listening), *reset* (the proxy accepts and resets), or every
request answered *503* by the stand-in. Each shape runs on its own stage, the three side by
side. Dead letters are for numbers that are bad, not for an API that is away.

Checked, per shape: the fleet pauses (``api.outage_started`` once, both replicas
``api.outage_paused``); while paused the fleet sends only probes, a few a minute; nothing is
dead-lettered; every number is confirmed within a minute of the endpoint's return; the
invariant holds; the workers exit 0 on SIGTERM.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from chaos.common import Rig, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import ProxyProc, Stage, WorkerProc, hold_for, numbers, wait_until
from chaos.report import Mode, Outcome, Scenario

SHAPES = ("refused", "reset", "503")
AWAY_S: dict[Mode, float] = {"full": 120.0, "reduced": 6.0}
SIZES: dict[Mode, int] = {"full": 3000, "reduced": 400}
OUTAGE_AFTER_S: dict[Mode, str] = {"full": "10", "reduced": "1"}
RATE_LIMIT = 20
BATCH = 20
IN_FLIGHT_MAX = 2 * 4
"""Requests in flight at once: two replicas at the default concurrency."""
BACK_WITHIN_S = 60.0
"""Every number confirmed within this long of the endpoint's return."""


@dataclass(slots=True)
class ShapeResult:
    shape: str
    failures: list[str]
    probes: int = 0
    paused_s: float = 0.0
    requests_while_paused: int | None = None
    back_s: float = 0.0
    dead: int = 0
    summary: str = ""

    def text(self) -> str:
        per_min = self.probes / max(self.paused_s / 60.0, 1e-9)
        reached = self.requests_while_paused
        seen = "" if reached is None else f", {reached} requests reached the endpoint"
        return (
            f"{self.shape}: paused {self.paused_s:.0f} s, {self.probes} probes"
            f" ({per_min:.1f}/min{seen}), all confirmed {self.back_s:.1f} s after its return,"
            f" {self.dead} dead letters"
        )


def _go_away(rig: Rig, proxy: ProxyProc, shape: str) -> None:
    if shape == "refused":
        proxy.control(faults={"refuse": True})
    elif shape == "reset":
        proxy.control(faults={"reset": True})
    else:
        rig.api.faults(error_rate=1.0)


def _come_back(rig: Rig, proxy: ProxyProc, shape: str) -> None:
    if shape == "503":
        rig.api.faults(error_rate=0.0)
    else:
        proxy.control(faults={"refuse": False, "reset": False})


def _reached(rig: Rig, proxy: ProxyProc, shape: str) -> int | None:
    """Requests that reached the endpoint: the stand-in's count, or the connections the proxy
    took (and reset); None for refused connections, which nothing can count."""
    if shape == "503":
        return int(rig.api.stats()["requests_total"])
    if shape == "reset":
        counters = proxy.control()
        return int(counters["connections"]) + int(counters["reset"])
    return None


def _probes(workers: list[WorkerProc]) -> int:
    return sum(len(w.named("api.probe")) for w in workers)


def _run_shape(shape: str, workdir: Path, mode: Mode) -> ShapeResult:
    result = ShapeResult(shape, [])
    with Stage(workdir / shape) as stage:
        rig = start_rig(stage)
        proxy = ProxyProc(stage, rig.api.url)
        workers = _start_workers(rig, proxy, mode)
        ids = numbers(SIZES[mode], f"outage-{shape}")
        rig.push(ids)
        wait_until(
            lambda: len(rig.api.confirmed()) >= len(ids) // 5, timeout_s=60, what="work under way"
        )
        _away_and_back(rig, proxy, workers, mode, result)
        outcome = Outcome(shape, shape)
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, *workers)
        _check_pause(outcome, workers, result)
        ledger = rig.ledger(ids)
        # Requests in flight when the proxy cut its connections may have been carried out
        # with the answer lost: sent again, they count 0 and are recorded, never lost.
        expect_invariant(outcome, ledger, resubmit_allowance=IN_FLIGHT_MAX * BATCH)
        result.dead = len(ledger.dead)
        outcome.expect(not ledger.dead, f"{shape}: {len(ledger.dead)} numbers dead-lettered")
        result.failures = outcome.failures
        result.summary = ledger.summary()
    return result


def _start_workers(rig: Rig, proxy: ProxyProc, mode: Mode) -> list[WorkerProc]:
    extra = {
        "ACKWORKER_ENDPOINT": proxy.http_url,
        "ACKWORKER_RATE_LIMIT": str(RATE_LIMIT),
        "ACKWORKER_BATCH_SIZE": str(BATCH),
        "ACKWORKER_HTTP_TIMEOUT_S": "2",
        "ACKWORKER_OUTAGE_AFTER_S": OUTAGE_AFTER_S[mode],
    }
    return [rig.worker("w1", **extra), rig.worker("w2", **extra)]


def _away_and_back(
    rig: Rig, proxy: ProxyProc, workers: list[WorkerProc], mode: Mode, result: ShapeResult
) -> None:
    """Take the endpoint away for ``AWAY_S``, counting what the fleet sends once paused;
    bring it back and time the backlog's drain."""
    shape = result.shape
    _go_away(rig, proxy, shape)
    away = time.monotonic()
    wait_until(
        lambda: any(w.has("api.outage_started") for w in workers),
        timeout_s=float(OUTAGE_AFTER_S[mode]) + 30,
        what="the fleet pauses",
    )
    paused = time.monotonic()
    reached_at_pause, probes_at_pause = _reached(rig, proxy, shape), _probes(workers)
    # The rest of the window; a worker that dies meanwhile fails the scenario at once.
    remaining_s = max(0.0, AWAY_S[mode] - (paused - away))
    hold_for(remaining_s, 1.0, lambda: _check_alive(workers))
    result.paused_s = time.monotonic() - paused
    reached = _reached(rig, proxy, shape)
    if reached is not None and reached_at_pause is not None:
        result.requests_while_paused = reached - reached_at_pause
    result.probes = _probes(workers) - probes_at_pause
    _come_back(rig, proxy, shape)
    back = time.monotonic()
    rig.wait_drained(BACK_WITHIN_S, f"backlog after the {shape} outage")
    result.back_s = time.monotonic() - back


def _check_alive(workers: list[WorkerProc]) -> None:
    for worker in workers:
        worker.check_alive()


def _check_pause(outcome: Outcome, workers: list[WorkerProc], result: ShapeResult) -> None:
    shape = result.shape
    started = sum(len(w.named("api.outage_started")) for w in workers)
    outcome.expect(started == 1, f"{shape}: api.outage_started logged {started} times")
    for w in workers:
        outcome.expect(w.has("api.outage_paused"), f"{shape}: {w.name} never paused")
    # 5 s, 10, 20, then every 30 s: at most about three a minute over a short pause.
    allowed = 3 + int(result.paused_s / 20)
    outcome.expect(
        result.probes <= allowed,
        f"{shape}: {result.probes} probes in {result.paused_s:.0f} s, at most {allowed}",
    )
    outcome.expect(
        result.requests_while_paused is None or result.requests_while_paused <= result.probes + 2,
        f"{shape}: {result.requests_while_paused} requests reached the endpoint while"
        f" paused, {result.probes} probes",
    )


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    outcome.injected = (
        f"the endpoint away for {AWAY_S[mode]:g} s, refused / reset / 503, mid-run, the three"
        f" shapes side by side (2 replicas each, {SIZES[mode]} numbers, rate limit"
        f" {RATE_LIMIT}/s, batch {BATCH}, outage_after_s {OUTAGE_AFTER_S[mode]})"
    )
    outcome.checked = (
        "the fleet pauses once; only probes while paused, a few a minute; 0 dead letters;"
        f" all confirmed within {BACK_WITHIN_S:g} s of the return; invariant"
    )
    with ThreadPoolExecutor(len(SHAPES)) as pool:
        results = list(pool.map(lambda s: _run_shape(s, workdir, mode), SHAPES))
    for result in results:
        outcome.failures += result.failures
        outcome.note(f"{result.shape}: {result.summary}")
    outcome.figure = "; ".join(r.text() for r in results)


SCENARIO = Scenario("14", "API outage (refused, reset, 503): a pause, not dead letters", run)
