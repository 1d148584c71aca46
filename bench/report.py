"""The record of a benchmark: the machine it ran on, the table, and the JSON file.

Medians are taken per row over the runs that produced a number; the JSON keeps every
run's raw numbers beside them, NaN written as null.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.measure import median
from bench.procs import REPO
from bench.scenario import Numbers, Row

PACKAGES = (
    "ackworker",
    "aiohttp",
    "anyio",
    "redis",
    "hiredis",
    "orjson",
    "structlog",
    "psutil",
    "alibabacloud-domain20180129",
    "alibabacloud-tea-openapi",
    "darabonba-core",
)


def _run(args: Sequence[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> Numbers:
    """CPU, cores, Python, Redis, package versions, the commit and the load right now."""
    redis_version = re.search(r"v=(\S+)", _run(["redis-server", "--version"]))
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "redis": redis_version.group(1) if redis_version else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": commit or None,
        # Others may be changing the tree while this runs: say what differed from the commit.
        "git_dirty_files": [line.split(None, 1)[1] for line in dirty.splitlines()],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def row_stats(row: Row, runs: Iterable[Numbers]) -> tuple[float, float, float]:
    """Median, min and max of ``row`` over the runs that have it (NaN when none)."""
    values = [v for run in runs if (v := row.value(run)) is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, math.nan
    return median(values), min(values), max(values)


def medians(rows: Sequence[Row], runs: Sequence[Numbers]) -> dict[str, float]:
    """Each row's median over ``runs``, keyed by label."""
    return {row.label: row_stats(row, runs)[0] for row in rows}


def _fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def table(sections: Mapping[str, tuple[Sequence[Row], Sequence[Numbers]]]) -> str:
    """The stdout table: one line per row, median with min and max over the runs."""
    header = ("scenario", "metric", "median", "min", "max", "target")
    lines = [header]
    for name, (rows, runs) in sections.items():
        ok_runs = [run for run in runs if "error" not in run]
        for row in rows:
            mid, low, high = row_stats(row, ok_runs)
            d = row.digits
            lines.append((name, row.label, _fmt(mid, d), _fmt(low, d), _fmt(high, d), row.target))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(_line(line, widths) for line in lines)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    left = [cells[i].ljust(widths[i]) for i in (0, 1)]
    right = [cells[i].rjust(widths[i]) for i in (2, 3, 4)]
    return "  ".join([*left, *right, cells[5]]).rstrip()


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, document: Numbers) -> None:
    """Write ``document`` as indented JSON (NaN as null), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(document), indent=1, sort_keys=False) + "\n")
