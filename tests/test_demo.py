"""``python -m worker.dev.demo`` end to end: real redis-server, the stand-in, ``ackworker run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, worker_env
from worker.dev.demo import MALFORMED

COUNT = 300
UNKNOWN = 12
DUPLICATES = 25


def run_demo(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary_file = tmp_path / "summary.json"
    args = [sys.executable, "-m", "worker.dev.demo", "--count", str(COUNT)]
    args += ["--unknown", str(UNKNOWN), "--duplicates", str(DUPLICATES)]
    args += ["--timeout-s", "60", "--log-dir", str(tmp_path), "--json-out", str(summary_file)]
    done = subprocess.run(
        args, cwd=REPO, env=worker_env(), capture_output=True, text=True, timeout=100, check=False
    )
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return done, summary


@pytest.mark.slow
def test_demo_settles_everything_and_says_so(tmp_path: Path) -> None:
    done, s = run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert s["problems"] == []
    assert s["enqueued"] == {
        "seeded": COUNT,
        "duplicates": DUPLICATES,
        "unknown": UNKNOWN,
        "malformed": len(MALFORMED),
    }
    # Every seeded number confirmed exactly once, as the stand-in and the worker both say.
    assert s["stand_in"]["confirmed"] == COUNT
    assert s["worker"]["confirmed"] == COUNT
    # Every malformed entry dead-lettered as invalid; nothing else dead-lettered.
    assert s["dead_by_reason"] == {"invalid_id": len(MALFORMED)}
    # Every unknown number is in a reconcile record, and the worker counted what it recorded.
    assert len(s["shortfall_ids"]) >= UNKNOWN
    assert s["shortfall"] >= UNKNOWN
    assert s["worker"]["shortfall"] == s["shortfall"]
    # Every valid entry ended confirmed, as a duplicate or as a shortfall: none went missing.
    w = s["worker"]
    assert w["confirmed"] + w["duplicates"] + w["shortfall"] == COUNT + DUPLICATES + UNKNOWN
    assert s["events"]["worker.stopped"] == 1
    assert s["events"]["item.invalid"] == len(MALFORMED)
    assert "demo ok" in done.stdout
    assert f"worker log    {tmp_path / 'worker.log'}" in done.stdout
