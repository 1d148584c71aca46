"""Measuring a running contestant: its backlog, CPU time and memory, and summary statistics.

CPU is the time the process itself spent on a CPU, read while it is still running: from
``/proc/<pid>/task/*/schedstat`` on Linux (nanoseconds), else psutil's user + system.
Peak RSS is the kernel's high-water mark (``VmHWM``) where Linux has it, else the largest
sample. The backlog is polled every 20 ms, RSS every 100 ms.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.procs import BenchError

POLL_S = 0.02
RSS_EVERY_S = 0.1
MB = 1024 * 1024


def median(values: Sequence[float]) -> float:
    """Median of ``values``; NaN when empty."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 or NaN."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator


class ProcWatch:
    """CPU and memory of one child process."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self._pid = pid
        self.rss_samples: list[tuple[float, int]] = []
        self.peak = 0
        """The peak RSS in bytes, once :meth:`peak_rss` was read before the process ended."""

    def cpu_s(self) -> float:
        """CPU seconds the process has used so far, all its threads.

        On Linux from ``/proc/<pid>/task/*/schedstat`` (nanoseconds on CPU), because user +
        system times come in 10 ms ticks, too coarse for a run of a second; elsewhere
        psutil's user + system.
        """
        tasks = Path(f"/proc/{self._pid}/task")
        if not tasks.is_dir():
            times = self._proc.cpu_times()
            return float(times.user + times.system)
        total_ns = 0
        for stat in tasks.glob("*/schedstat"):
            try:
                total_ns += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended while we read
        return total_ns / 1e9

    def sample_rss(self, at_s: float) -> int:
        """Record and return the resident set size now, in bytes."""
        rss = int(self._proc.memory_info().rss)
        self.rss_samples.append((at_s, rss))
        return rss

    def peak_rss(self) -> int:
        """The high-water mark of the resident set, bytes."""
        status = Path(f"/proc/{self._pid}/status")
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return max((rss for _, rss in self.rss_samples), default=0)


@dataclass(slots=True)
class Drain:
    """How a contestant worked through a backlog; times are monotonic seconds."""

    total: int
    spawned_s: float
    first_settle_s: float = math.nan
    backlog_at_first: int = 0
    cpu_at_first_s: float = math.nan
    drained_s: float = math.nan
    cpu_end_s: float = math.nan
    progress: list[tuple[float, int]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        """From spawning the process to the last settle."""
        return self.drained_s - self.spawned_s

    @property
    def startup_s(self) -> float:
        """From spawning the process to the first settle seen."""
        return self.first_settle_s - self.spawned_s

    @property
    def steady_items(self) -> int:
        """Items settled between the first settle seen and the last."""
        return self.backlog_at_first

    @property
    def steady_s(self) -> float:
        """From the first settle seen to the last."""
        return self.drained_s - self.first_settle_s


def watch_drain(
    backlog: Callable[[], int],
    proc: subprocess.Popen[bytes],
    watch: ProcWatch,
    *,
    spawned_s: float,
    timeout_s: float,
    alive: Callable[[], None],
) -> Drain:
    """Poll ``backlog()`` every 20 ms until it is 0, sampling RSS every 100 ms.

    ``alive`` raises when the process died. Raises BenchError after ``timeout_s``.
    """
    drain = Drain(total=backlog(), spawned_s=spawned_s)
    deadline = spawned_s + timeout_s
    next_rss = 0.0
    while True:
        now = time.monotonic()
        if now >= next_rss:
            watch.sample_rss(now)
            next_rss = now + RSS_EVERY_S
        left = backlog()
        _observe(drain, watch, now, left)
        if left == 0:
            drain.drained_s, drain.cpu_end_s = now, watch.cpu_s()
            return drain
        alive()
        if now > deadline:
            raise BenchError(f"{left} of {drain.total} still unsettled after {timeout_s:g} s")
        time.sleep(POLL_S)


def _observe(drain: Drain, watch: ProcWatch, now: float, left: int) -> None:
    if left < drain.total and math.isnan(drain.first_settle_s):
        drain.first_settle_s, drain.backlog_at_first = now, left
        drain.cpu_at_first_s = watch.cpu_s()
    if not drain.progress or drain.progress[-1][1] != left:
        drain.progress.append((now - drain.spawned_s, left))
