"""What every scenario shares: the options, and how a scenario declares its table rows.

A scenario module provides ``NAME``, ``ROWS`` and ``run_once(opts, workdir, index)``, which
returns one run's raw numbers as a JSON-ready dict. :mod:`bench.run` runs it ``opts.runs``
times and reports the median of every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

Numbers = dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Options:
    """Sizes and durations of the scenarios (``--quick`` makes them small)."""

    runs: int = 3
    ceiling_n: int = 200_000
    api_n: int = 20_000
    latency_s: float = 30.0
    latency_load: float = 0.3
    backlog_n: int = 1_000_000
    peers_n: int = 20_000
    peer_a_s: float = 20.0
    signing_iterations: int = 2000
    dirty_tasks: int = 100
    dirty_task_size: int = 100

    def quick(self) -> Options:
        """Small sizes for a fast check that everything works (numbers are indicative)."""
        return replace(
            self,
            ceiling_n=20_000,
            api_n=2_000,
            latency_s=5.0,
            backlog_n=50_000,
            peers_n=5_000,
            peer_a_s=5.0,
            signing_iterations=200,
            dirty_tasks=20,
        )


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a label, where the number is in a run, and the issue's target."""

    label: str
    path: tuple[str, ...]
    target: str = ""
    digits: int = 0

    def value(self, run: Numbers) -> float | None:
        """This row's number in ``run``, or None when the run lacks it."""
        node: Any = run
        for key in self.path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) else None


class Scenario(Protocol):
    """A scenario module, as :mod:`bench.run` uses it."""

    NAME: str
    ROWS: tuple[Row, ...]
    run_once: Callable[[Options, Path, int], Numbers]
