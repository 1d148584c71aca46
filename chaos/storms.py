"""Scenario 3, API storms: one fault at a time at the stand-in, each for a window, then calm.

5xx answers, a quota below the configured rate limit (a throttling storm), connection
resets, hangs past the worker's HTTP timeout, HTML error pages and truncated JSON. After each
storm the faults stop and the backlog must settle. During the throttling storm the fleet's
request rate must fall to the quota within seconds: the figure is throttled answers per
minute in the storm's first seconds and in its last ones.

A truncated answer comes from a request the stand-in *did* carry out: the worker cannot
know, sends the batch again, the stand-in counts 0 and the batch ends in reconcile. Those
re-submissions (at most truncated answers × batch size) are the only ones allowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from chaos.common import Rig, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import Stage, WorkerProc, hold_for, numbers
from chaos.report import Mode, Outcome, Scenario

RATE_LIMIT = 20
QUOTA_RPS = 5
BATCH = 20
NUMBERS_PER_S = RATE_LIMIT * BATCH


@dataclass(frozen=True, slots=True)
class Storm:
    name: str
    faults: dict[str, float]
    window_s: dict[Mode, float]


STORMS = (
    Storm("5xx 30%", {"error_rate": 0.3}, {"full": 20, "reduced": 1.5}),
    Storm(f"quota {QUOTA_RPS}/s", {"quota_rps": QUOTA_RPS}, {"full": 60, "reduced": 10}),
    Storm("resets 30%", {"reset_rate": 0.3}, {"full": 10, "reduced": 1.5}),
    Storm("hangs 20% (5 s, timeout 1 s)", {"hang_rate": 0.2}, {"full": 10, "reduced": 1.5}),
    Storm("HTML 502 30%", {"html_rate": 0.3}, {"full": 10, "reduced": 1.5}),
    Storm("truncated JSON 20%", {"truncated_rate": 0.2}, {"full": 10, "reduced": 1.5}),
)
CALM = {
    "error_rate": 0.0,
    "quota_rps": 0.0,
    "reset_rate": 0.0,
    "hang_rate": 0.0,
    "html_rate": 0.0,
    "truncated_rate": 0.0,
}


@dataclass(slots=True)
class Sample:
    at_s: float
    requests: int
    throttled: int


def _sample(rig: Rig, start: float) -> Sample:
    stats = rig.api.stats()
    throttled = int(stats["errors_by_code"].get("Throttling.User", 0))
    return Sample(time.monotonic() - start, int(stats["requests_total"]), throttled)


def _per_minute(samples: list[Sample], lo_s: float, hi_s: float) -> tuple[float, float]:
    """Throttled answers and requests per minute between ``lo_s`` and ``hi_s``."""
    inside = [s for s in samples if lo_s <= s.at_s <= hi_s]
    if len(inside) < 2:
        return 0.0, 0.0
    first, last = inside[0], inside[-1]
    minutes = max(1e-9, (last.at_s - first.at_s) / 60.0)
    return (last.throttled - first.throttled) / minutes, (last.requests - first.requests) / minutes


def _adapted_after(samples: list[Sample]) -> float | None:
    """Seconds until the request rate over 2 s (throttled answers included) first fell to
    at most 1.5 × the quota."""
    for i, s in enumerate(samples):
        earlier = [p for p in samples[:i] if s.at_s - p.at_s >= 2.0]
        if earlier:
            p = earlier[-1]
            if (s.requests - p.requests) / (s.at_s - p.at_s) <= QUOTA_RPS * 1.5:
                return s.at_s
    return None


def _throttling_figure(outcome: Outcome, samples: list[Sample], window_s: float) -> str:
    edge = max(3.0, window_s / 6)
    before, before_rpm = _per_minute(samples, 0.0, edge)
    after, after_rpm = _per_minute(samples, window_s - edge, window_s)
    adapted = _adapted_after(samples)
    outcome.expect(adapted is not None, "request rate never fell to the quota during the storm")
    # Requests include the throttled answers; an adaptive limiter that probes the quota
    # keeps a few of those.
    outcome.expect(
        after_rpm / 60 <= QUOTA_RPS * 1.5,
        f"request rate at the storm's end {after_rpm / 60:.1f}/s, quota {QUOTA_RPS}/s",
    )
    outcome.expect(after < before / 2, f"throttling did not subside: {before:.0f}→{after:.0f}/min")
    settled = "never" if adapted is None else f"{adapted:.1f} s"
    return (
        f"throttled answers {before:.0f}/min in the first {edge:.0f} s → {after:.0f}/min in the"
        f" last {edge:.0f} s (requests {before_rpm / 60:.1f}/s → {after_rpm / 60:.1f}/s,"
        f" quota {QUOTA_RPS}/s, limit {RATE_LIMIT}/s); at the quota after {settled}"
    )


def _storm(rig: Rig, storm: Storm, mode: Mode, outcome: Outcome) -> tuple[list[str], str]:
    window_s = storm.window_s[mode]
    # Enough to keep the fleet busy through the window, not much more: what is left when
    # the storm ends drains at the limiter's pace, which climbs back slowly after a quota.
    per_s = QUOTA_RPS * BATCH * 1.5 if "quota_rps" in storm.faults else NUMBERS_PER_S
    ids = numbers(int(window_s * per_s) + 200, f"storm-{storm.name}")
    rig.api.reset_stats()
    rig.push(ids)
    start = time.monotonic()
    rig.api.faults(**storm.faults)
    samples: list[Sample] = []
    hold_for(window_s, 0.5, lambda: samples.append(_sample(rig, start)))
    injected = rig.api.stats()["faults_injected"]
    rig.api.faults(**CALM)
    settle_s = rig.wait_drained(180, f"backlog after the {storm.name} storm")
    text = f"{storm.name}: {sum(injected.values())} faults, settled {settle_s:.1f} s after"
    if "quota_rps" in storm.faults:
        text = _throttling_figure(outcome, samples, window_s)
    return ids, text


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    outcome.injected = (
        "; ".join(f"{s.name} for {s.window_s[mode]:g} s" for s in STORMS)
        + f" (2 replicas, rate limit {RATE_LIMIT}/s, batch {BATCH}, HTTP timeout 1 s)"
    )
    outcome.checked = (
        "each storm settles once it stops; request rate falls to the quota; invariant;"
        " re-submissions ≤ truncated answers × batch"
    )
    enqueued: list[str] = []
    lines: list[str] = []
    with Stage(workdir) as stage:
        rig = start_rig(stage, "--hang-s", "5")
        extra = {
            "ACKWORKER_RATE_LIMIT": str(RATE_LIMIT),
            "ACKWORKER_BATCH_SIZE": str(BATCH),
            "ACKWORKER_HTTP_TIMEOUT_S": "1",
        }
        workers: list[WorkerProc] = [rig.worker("w1", **extra), rig.worker("w2", **extra)]
        truncated = 0
        for storm in STORMS:
            ids, text = _storm(rig, storm, mode, outcome)
            if "truncated_rate" in storm.faults:
                truncated = int(rig.api.stats()["faults_injected"].get("truncated", 0))
            enqueued += ids
            lines.append(text)
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, *workers)
        throttled_events = sum(len(w.named("limiter.throttled")) for w in workers)
        rate_events = sum(len(w.named("limiter.rate_changed")) for w in workers)
        ledger = rig.ledger(enqueued)
    expect_invariant(outcome, ledger, resubmit_allowance=truncated * BATCH)
    outcome.figure = lines[1]
    outcome.note("; ".join(lines[:1] + lines[2:]))
    outcome.note(
        f"{ledger.summary()}; truncated answers {truncated};"
        f" limiter.throttled logged {throttled_events}, limiter.rate_changed {rate_events}"
    )


SCENARIO = Scenario("3", "API storms (5xx, quota, resets, hangs, HTML, truncated)", run)
