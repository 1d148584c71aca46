"""Scenario 12, one account throttled while another flows.

Two stand-ins, one per account (`default` and `eu`, each with its own key), and two worker
replicas configured with both. Numbers of both accounts arrive at a steady pace, interleaved
in one stream. First both accounts are calm (the baseline); then eu's stand-in answers every
request with Throttling.User for a window; then it is calm again.

What must hold: the default account's confirmations per second during eu's storm stay close
to its baseline (one account's throttling slows no other); every entry was moved to its
account's stream once (none went round again); eu's own limiter was cut and
paused while the default account's never was; once the storm ends eu's backlog drains; and
the invariant holds for both accounts, with no dead letters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from chaos.common import Rig, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.invariant import check_invariant
from chaos.procs import MockApiProc, Stage, WorkerProc, enqueue, numbers
from chaos.report import Mode, Outcome, Scenario

EU_KEY = ("LTAIeuchaos00001", "eu-chaos-secret")
RATE_LIMIT = 100  # per account
PER_S = 150  # numbers per second per account: well under what the limit allows
WINDOW_S: dict[Mode, float] = {"full": 30.0, "reduced": 4.0}
# The default account's pace during eu's storm, as a share of its baseline.
MIN_SHARE = 0.8


@dataclass(slots=True)
class Phase:
    name: str
    seconds: float
    confirmed: int  # default-account numbers confirmed during the phase

    @property
    def rate(self) -> float:
        return self.confirmed / self.seconds


def _config(workdir: Path, eu: MockApiProc) -> Path:
    path = workdir / "accounts.toml"
    path.write_text(
        f'[accounts.eu]\nendpoint = "{eu.url}"\nrate_limit = {RATE_LIMIT}\n'
        'access_key_id_env = "EU_KEY_ID"\naccess_key_secret_env = "EU_KEY_SECRET"\n',
        encoding="utf-8",
    )
    return path


def _confirmed(api: MockApiProc) -> int:
    return int(api.stats()["confirmed"])


def _feed(rig: Rig, eu: MockApiProc, seconds: float, tag: str) -> tuple[list[str], list[str], int]:
    """Push both accounts' numbers at PER_S each for ``seconds``; returns what was pushed and
    how many default numbers the home stand-in confirmed meanwhile."""
    home_ids: list[str] = []
    eu_ids: list[str] = []
    before = _confirmed(rig.api)
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        home = numbers(PER_S // 10, f"acc-home-{tag}-{tick}")
        away = numbers(PER_S // 10, f"acc-eu-{tag}-{tick}")
        rig.api.seed(home)
        eu.seed(away)
        entries: list[dict[str, str | bytes]] = []
        for h, e in zip(home, away, strict=True):
            entries += [{"id": h}, {"id": e, "account": "eu"}]
        with rig.client() as client:
            enqueue(client, rig.keys, entries)
        home_ids += home
        eu_ids += away
        tick += 1
        time.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))
    return home_ids, eu_ids, _confirmed(rig.api) - before


def _limiter(rig: Rig, key: str) -> dict[str, float]:
    with rig.client() as client:
        raw = client.hgetall(key)
    return {k.decode(): float(v) for k, v in raw.items()}


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    window_s = WINDOW_S[mode]
    outcome.injected = (
        f"eu's stand-in throttles every request for {window_s:g} s while both accounts get"
        f" {PER_S} numbers/s (2 replicas, {RATE_LIMIT} requests/s per account)"
    )
    outcome.checked = (
        f"default account's pace during eu's storm ≥ {MIN_SHARE:.0%} of its baseline; eu's"
        " limiter cut and paused, default's never; eu drains afterwards; invariant for both"
    )
    with Stage(workdir) as stage:
        rig = start_rig(stage)
        eu = stage.mock_api(
            "--fault-seed", "7", "--access-key-id", EU_KEY[0], "--access-key-secret", EU_KEY[1],
            name="mock-api-eu",
        )  # fmt: skip
        extra = {
            "ACKWORKER_CONFIG": str(_config(workdir, eu)),
            "ACKWORKER_RATE_LIMIT": str(RATE_LIMIT),
            "ACKWORKER_MAX_ATTEMPTS": "100",
            "EU_KEY_ID": EU_KEY[0],
            "EU_KEY_SECRET": EU_KEY[1],
        }
        workers: list[WorkerProc] = [rig.worker("w1", **extra), rig.worker("w2", **extra)]
        home_ids, eu_ids, confirmed = _feed(rig, eu, window_s, "calm")
        baseline = Phase("baseline", window_s, confirmed)
        eu.faults(throttle_rate=1.0, retry_after_ms=500)
        home_more, eu_more, confirmed = _feed(rig, eu, window_s, "storm")
        storm = Phase("eu throttled", window_s, confirmed)
        eu_limiter = _limiter(rig, rig.keys.limiter_for("eu"))
        home_limiter = _limiter(rig, rig.keys.limiter)
        eu_throttled = int(eu.stats()["errors_by_code"].get("Throttling.User", 0))
        eu.faults(throttle_rate=0.0)
        settle_s = rig.wait_drained(120, "both accounts' backlog after eu's storm")
        with rig.client() as client:
            added = {
                name: int(client.xinfo_stream(rig.keys.account_stream(name))["entries-added"])
                for name in ("default", "eu")
            }
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, *workers)
        with rig.client() as client:
            home_ledger = check_invariant(client, rig.keys, rig.api, home_ids + home_more)
            eu_ledger = check_invariant(client, rig.keys, eu, eu_ids + eu_more)
    share = storm.rate / max(baseline.rate, 1e-9)
    outcome.expect(
        share >= MIN_SHARE,
        f"default account confirmed {storm.rate:.0f}/s during eu's storm, {baseline.rate:.0f}/s"
        f" before: {share:.0%} < {MIN_SHARE:.0%}",
    )
    outcome.expect(eu_throttled > 0, "eu's stand-in throttled nothing")
    pushed = {"default": len(home_ids + home_more), "eu": len(eu_ids + eu_more)}
    # Every entry moved to its account's stream exactly once, whatever eu's state.
    outcome.expect(added == pushed, f"entries added to the account streams {added}, {pushed}")
    outcome.expect(eu_limiter.get("last_cut", 0) > 0, "eu's limiter was never cut")
    outcome.expect(home_limiter.get("last_cut", 0) == 0, "the default account's limiter was cut")
    for ledger in (home_ledger, eu_ledger):
        expect_invariant(outcome, ledger)
        outcome.expect(not ledger.dead, f"dead letters: {ledger.summary()}")
    outcome.figure = (
        f"default account {baseline.rate:.0f}/s calm → {storm.rate:.0f}/s while eu was throttled"
        f" ({share:.0%}); eu drained {settle_s:.1f} s after its storm"
    )
    outcome.note(
        f"eu: {eu_throttled} throttling answers, its rate cut to {eu_limiter.get('rate', 0):.1f}/s;"
        f" default: {home_ledger.summary()}; eu: {eu_ledger.summary()}"
    )


SCENARIO = Scenario("12", "One account throttled while another flows", run)
