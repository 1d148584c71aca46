"""``make bench``: run the scenarios, print the table, write ``bench/results/latest.json``.

    .venv/bin/python bench/run.py                      # everything, 3 runs each
    .venv/bin/python bench/run.py --quick              # small sizes, a fast check
    .venv/bin/python bench/run.py --scenario ceiling --runs 5 --ceiling-n 500000

Each run of each scenario starts its own redis-server and stand-in in a scratch directory
and stops them when it ends, also on failure and on Ctrl-C. A failed run is recorded with
its error and the exit code is 1; the other runs go on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: import `bench` from the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import api_bound, backlog, ceiling, dirty, latency, peers, signing
from bench.procs import REPO, BenchError
from bench.report import machine, medians, table, write_json
from bench.scenario import Numbers, Options, Scenario

SCENARIOS: dict[str, Scenario] = {
    m.NAME: m for m in (ceiling, api_bound, latency, backlog, peers, signing, dirty)
}
RESULTS = REPO / "bench" / "results"
_SIZES = (
    ("ceiling_n", int, "numbers enqueued for the ceiling (default 200000)"),
    ("api_n", int, "numbers for the API-bound scenario (default 20000)"),
    ("latency_s", float, "seconds the latency scenario's producer runs (default 30)"),
    ("latency_load", float, "producer rate as a share of capacity (default 0.3)"),
    ("backlog_n", int, "numbers in the backlog-memory scenario (default 1000000)"),
    ("peers_n", int, "numbers for ackworker and the SDK peers (default 20000)"),
    ("peer_a_s", float, "seconds the one-number-per-call SDK peer may run (default 20)"),
    ("signing_iterations", int, "signatures per timeit repeat (default 2000)"),
    ("dirty_tasks", int, "tasks seeded and enqueued for the dirty scenario (default 100)"),
    ("dirty_task_size", int, "numbers per task in the dirty scenario (default 100)"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; sizes left unset come from the defaults or ``--quick``."""
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="repeatable; default all"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    for name, kind, text in _SIZES:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON path")
    parser.add_argument(
        "--dated", action="store_true", help="also write bench/results/<YYYY-MM-DD>.json"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    """Defaults, then ``--quick``, then every size given on the command line."""
    opts = Options(runs=max(1, args.runs))
    if args.quick:
        opts = opts.quick()
    given = {name: getattr(args, name) for name, _, _ in _SIZES if getattr(args, name) is not None}
    return replace(opts, **given)


def run_scenario(scenario: Scenario, opts: Options, scratch: Path) -> list[Numbers]:
    """``opts.runs`` runs of one scenario; a failed run is recorded as ``{"error": ...}``."""
    runs: list[Numbers] = []
    for index in range(opts.runs):
        started = time.monotonic()
        try:
            runs.append(scenario.run_once(opts, scratch / f"{scenario.NAME}-{index}", index))
        except BenchError as exc:
            runs.append({"error": str(exc)})
        took = time.monotonic() - started
        status = runs[-1].get("error", "ok")
        print(f"{scenario.NAME} {index + 1}/{opts.runs}: {took:.1f} s, {status}", file=sys.stderr)
    return runs


def run_all(names: list[str], opts: Options, scratch: Path) -> dict[str, Any]:
    """Every chosen scenario; their runs and medians."""
    results: dict[str, Any] = {}
    for name in names:
        scenario = SCENARIOS[name]
        runs = run_scenario(scenario, opts, scratch)
        ok = [run for run in runs if "error" not in run]
        results[name] = {"median": medians(scenario.ROWS, ok), "runs": runs}
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; 0 when every run succeeded."""
    args = parse_args(argv)
    opts = options_from(args)
    names = args.scenario or list(SCENARIOS)
    document: Numbers = {
        "schema": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": ["bench/run.py", *(sys.argv[1:] if argv is None else argv)],
        "options": {**asdict(opts), "quick": args.quick},
        "machine": machine(),
    }
    scratch = Path(tempfile.mkdtemp(prefix="ackworker-bench-"))
    try:
        document["scenarios"] = run_all(names, opts, scratch)
    finally:
        if args.keep:
            print(f"scratch directory (logs): {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    document["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    scenarios = document["scenarios"]
    print(table({n: (SCENARIOS[n].ROWS, scenarios[n]["runs"]) for n in names}))
    for name in names:
        for index, run in enumerate(scenarios[name]["runs"], start=1):
            if "error" in run:
                print(f"{name} run {index} failed: {run['error']}")
    write_json(args.out, document)
    if args.dated:
        write_json(RESULTS / f"{dt.date.today().isoformat()}.json", document)
    failed = sum("error" in run for n in names for run in scenarios[n]["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
