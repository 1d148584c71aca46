"""Running one contestant through a backlog on a :class:`~bench.procs.Stack` and summing up.

A contestant is a process that drains ``bench:tasks``: ``ackworker run`` or the bare loop.
It is measured from the moment it is spawned until ``XLEN`` is 0, then stopped with SIGTERM
(it must exit 0), and the stand-in's counters say what reached the API.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.data import KEYS
from bench.measure import MB, Drain, ProcWatch, watch_drain
from bench.procs import ACCESS_KEY_ID, ACCESS_KEY_SECRET, PYTHON, BenchError, Stack, clean_env

Numbers = dict[str, Any]
AfterDrain = Callable[[Callable[[], None]], None]
"""Run once the backlog is first 0, the contestant still running; its argument raises
BenchError when the contestant has exited."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerConfig:
    """The ``ACKWORKER_*`` settings a scenario runs the worker with."""

    rate_limit: float = 100_000.0
    batch_size: int = 100
    concurrency: int = 8
    linger_ms: int = 200

    def as_dict(self) -> dict[str, float]:
        """The settings, for the JSON."""
        return asdict(self)

    def env(self, stack: Stack) -> dict[str, str]:
        """The worker's environment on ``stack`` (JSON logs at info, as in production)."""
        return clean_env(
            ACKWORKER_REDIS_URL=stack.redis_url,
            ACKWORKER_KEY_PREFIX=KEYS.prefix,
            ACKWORKER_CONSUMER="bench-1",
            ACKWORKER_ENDPOINT=stack.api_url,
            ACKWORKER_RATE_LIMIT=f"{self.rate_limit:g}",
            ACKWORKER_BATCH_SIZE=str(self.batch_size),
            ACKWORKER_CONCURRENCY=str(self.concurrency),
            ACKWORKER_LINGER_MS=str(self.linger_ms),
            ALIBABA_CLOUD_ACCESS_KEY_ID=ACCESS_KEY_ID,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=ACCESS_KEY_SECRET,
        )


def ackworker_args() -> list[str]:
    """``ackworker run``, as the installed command would run it."""
    return [PYTHON, "-m", "worker", "run"]


def bare_loop_args(stack: Stack, *, batch_size: int = 100, in_flight: int = 8) -> list[str]:
    """The reference loop of :mod:`bench.bare_loop` on ``stack``."""
    return [
        *(PYTHON, "-m", "bench.bare_loop", "--redis-url", stack.redis_url),
        *("--endpoint", stack.api_url, "--prefix", KEYS.prefix),
        *("--batch-size", str(batch_size), "--in-flight", str(in_flight)),
    ]


def admin_stats(api_url: str) -> dict[str, Any]:
    """The stand-in's ``GET /_admin/stats``."""
    with urllib.request.urlopen(f"{api_url}/_admin/stats", timeout=30) as reply:
        stats: dict[str, Any] = json.load(reply)
    return stats


def backlog(stack: Stack) -> int:
    """``XLEN bench:tasks``: entries not settled yet."""
    return int(stack.redis.xlen(KEYS.tasks))  # type: ignore[arg-type]


def drain_backlog(
    stack: Stack,
    name: str,
    args: Sequence[str],
    env: dict[str, str],
    *,
    timeout_s: float,
    after_drain: AfterDrain | None = None,
) -> tuple[Drain, ProcWatch]:
    """Spawn the contestant, wait until the backlog is 0, stop it; its drain and its watch.

    ``after_drain`` runs between the drain and the stop (late arrivals, say); the drain's
    numbers describe the first drain only, so they mean the same with or without it.
    """
    spawned = time.monotonic()
    child = stack.procs.start(name, args, env)
    watch = ProcWatch(child.pid)
    drain = watch_drain(
        lambda: backlog(stack),
        child.proc,
        watch,
        spawned_s=spawned,
        timeout_s=timeout_s,
        alive=child.check_alive,
    )
    if after_drain is not None:
        after_drain(child.check_alive)
    watch.peak = watch.peak_rss()
    code = child.stop()
    if code != 0:
        raise BenchError(f"{name} exited with {code} after SIGTERM; see {child.log}")
    return drain, watch


def summarize(drain: Drain, watch: ProcWatch, api: Mapping[str, Any]) -> Numbers:
    """The raw numbers of one contestant's drain, as stored in the JSON."""
    errors: dict[str, int] = dict(api.get("errors_by_code") or {})
    steady_cpu_s = drain.cpu_end_s - drain.cpu_at_first_s
    return {
        "items": drain.total,
        "wall_s": drain.wall_s,
        "startup_s": drain.startup_s,
        "items_per_s": drain.total / drain.wall_s,
        "steady_items_per_s": _per(drain.steady_items, drain.steady_s),
        "cpu_s": drain.cpu_end_s,
        "cpu_us_per_item": drain.cpu_end_s / drain.total * 1e6,
        "cpu_us_per_item_steady": _per(steady_cpu_s * 1e6, drain.steady_items),
        "peak_rss_mb": watch.peak / MB,
        "requests": int(api.get("requests_total") or 0),
        "confirmed": int(api.get("confirmed") or 0),
        "confirmed_more_than_once": int(api.get("confirmed_more_than_once") or 0),
        "errors_by_code": errors,
        "throttled": sum(n for code, n in errors.items() if code.startswith("Throttling")),
    }


def _per(amount: float, over: float) -> float:
    return amount / over if over > 0 and not math.isnan(over) else math.nan


def measure(
    stack: Stack, name: str, args: Sequence[str], env: dict[str, str], *, timeout_s: float
) -> Numbers:
    """Drain the backlog with one contestant and check every number reached the stand-in."""
    drain, watch = drain_backlog(stack, name, args, env, timeout_s=timeout_s)
    numbers = summarize(drain, watch, admin_stats(stack.api_url))
    if numbers["confirmed"] != drain.total:
        raise BenchError(
            f"{name}: the stand-in confirmed {numbers['confirmed']} of {drain.total}; "
            f"see {stack.procs.log(name)}"
        )
    return numbers
