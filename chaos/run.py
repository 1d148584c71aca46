"""``make chaos``: run every scenario and write ``docs/reliability.md``.

    python -m chaos.run            # full sizes (the whole suite in about 16 minutes)
    python -m chaos.run --reduced  # every scenario small, as tests/test_chaos_smoke.py runs it
    python -m chaos.run --only 3,5 --no-write

Each scenario runs in its own directory under ``--workdir`` (a temporary one by default),
where the logs of every process it started are kept when it fails. Exit code 0 when every
scenario passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from chaos import (
    accounts,
    clock_skew,
    crash,
    credentials,
    outage,
    overload,
    poison,
    poller_crash,
    redis_replies,
    redis_restart,
    security,
    shortfall_storm,
    soak,
    storms,
)
from chaos.procs import REPO
from chaos.report import Mode, Outcome, Scenario, write

SCENARIOS: tuple[Scenario, ...] = (
    crash.SCENARIO,
    redis_restart.SCENARIO,
    storms.SCENARIO,
    poison.SCENARIO,
    credentials.SCENARIO,
    clock_skew.SCENARIO,
    overload.SCENARIO,
    soak.SCENARIO,
    security.SCENARIO,
    poller_crash.SCENARIO,
    shortfall_storm.SCENARIO,
    accounts.SCENARIO,
    redis_replies.SCENARIO,
    outage.SCENARIO,
)
DEFAULT_OUT = REPO / "docs" / "reliability.md"


def run_scenario(scenario: Scenario, workdir: Path, mode: Mode) -> Outcome:
    """Run one scenario; an exception becomes a failure of its outcome, never a crash."""
    outcome = Outcome(scenario.key, scenario.title)
    started = time.monotonic()
    try:
        scenario.run(outcome, workdir, mode)
    except Exception as exc:
        outcome.failures.append(f"{type(exc).__name__}: {exc}")
        outcome.note("".join(traceback.format_exception(exc, limit=-3)).strip())
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chaos.run", description=__doc__.splitlines()[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_const", dest="mode", const="full")
    sizes.add_argument("--reduced", action="store_const", dest="mode", const="reduced")
    parser.set_defaults(mode="full")
    parser.add_argument("--only", default="", help="scenario numbers, e.g. 1,3")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the report to write")
    parser.add_argument("--no-write", action="store_true", help="print only; write no report")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    chosen = [s for s in SCENARIOS if not args.only or s.key in args.only.split(",")]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ackworker-chaos-"))
    started = time.monotonic()
    outcomes: list[Outcome] = []
    for scenario in chosen:
        print(f"[{scenario.key}] {scenario.title} ...", flush=True)
        outcome = run_scenario(scenario, root / f"s{scenario.key}", args.mode)
        outcomes.append(outcome)
        verdict = "pass" if outcome.ok else "FAIL: " + "; ".join(outcome.failures)
        print(f"[{scenario.key}] {verdict} ({outcome.elapsed_s:.1f} s)\n    {outcome.figure}")
        for note in outcome.notes:
            print(f"    note: {note}")
    total_s = time.monotonic() - started
    failed = [o for o in outcomes if not o.ok]
    if not args.no_write:
        write(args.out, outcomes, args.mode, total_s)
        print(f"wrote {args.out}")
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed in {total_s:.0f} s")
    if failed or args.workdir:
        print(f"logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
