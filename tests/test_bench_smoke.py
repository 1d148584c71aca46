"""``make bench`` cannot rot: tiny ceiling and dirty runs, and the signing micro-benchmark.

The ceiling run goes through the same code as ``bench/run.py``: its own redis-server and
stand-in, ``ackworker run`` and the bare loop as subprocesses, the JSON written at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import ceiling, dirty
from bench import run as bench_run
from bench import signing as bench_signing

COUNT = 2000
DIRTY_TASKS, DIRTY_TASK_SIZE = 3, 50
CONTESTANT_KEYS = {
    "items",
    "wall_s",
    "startup_s",
    "items_per_s",
    "steady_items_per_s",
    "cpu_s",
    "cpu_us_per_item",
    "cpu_us_per_item_steady",
    "peak_rss_mb",
    "requests",
    "confirmed",
    "confirmed_more_than_once",
    "errors_by_code",
    "throttled",
}


def test_ceiling_smoke_run_confirms_everything_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    argv = ["--scenario", "ceiling", "--runs", "1", "--ceiling-n", str(COUNT), "--out", str(out)]

    assert bench_run.main(argv) == 0

    document = json.loads(out.read_text())
    assert {"schema", "started_at", "finished_at", "command", "options", "machine"} <= set(document)
    assert {"cpu_model", "cores", "python", "redis", "packages"} <= set(document["machine"])
    assert set(document["scenarios"]) == {"ceiling"}
    result = document["scenarios"]["ceiling"]
    assert set(result["median"]) == {row.label for row in ceiling.ROWS}
    (run,) = result["runs"]
    for name in ("ackworker", "bare_loop"):
        numbers = run[name]
        assert set(numbers) >= CONTESTANT_KEYS, name
        # Read from the stand-in's /_admin/stats: every number confirmed, none twice.
        assert (numbers["items"], numbers["confirmed"]) == (COUNT, COUNT), name
        assert numbers["confirmed_more_than_once"] == 0, name
        assert numbers["items_per_s"] > 0, name
    assert run["ratios"]["items_per_s"] > 0


def test_dirty_smoke_run_reports_every_row_and_confirms_every_seeded_number(
    tmp_path: Path,
) -> None:
    out = tmp_path / "latest.json"
    sizes = ["--dirty-tasks", str(DIRTY_TASKS), "--dirty-task-size", str(DIRTY_TASK_SIZE)]
    argv = ["--scenario", "dirty", "--runs", "1", *sizes, "--out", str(out)]

    assert bench_run.main(argv) == 0

    result = json.loads(out.read_text())["scenarios"]["dirty"]
    assert set(result["median"]) == {row.label for row in dirty.ROWS}
    assert None not in result["median"].values()
    (run,) = result["runs"]
    seeded = DIRTY_TASKS * DIRTY_TASK_SIZE
    # The quota targets are not asserted: they measure the worker, not the harness.
    for variant in dirty.VARIANTS:
        numbers = run[variant.key]
        assert (numbers["seeded"], numbers["confirmed"], numbers["pending"]) == (seeded, seeded, 0)
        assert numbers["missing"] == round(seeded * variant.unknown_share), variant.key
        assert numbers["body_entries"] == seeded + numbers["missing"], variant.key
        assert numbers["late_duplicates"] >= 2, variant.key
        assert numbers["clean_minimum"] == -(-numbers["body_entries"] // 100), variant.key
        by_action = numbers["acknowledge_requests"] + numbers["poll_requests"]
        assert numbers["requests"] == by_action > 0, variant.key


def test_signing_micro_benchmark_runs() -> None:
    numbers = bench_signing.measure(iterations=3)

    assert set(numbers) == {"iterations", "v3_us", "v1_us", "naive_v1_us", "naive_v1_over_v1"}
    assert all(numbers[key] > 0 for key in ("v3_us", "v1_us", "naive_v1_us"))
