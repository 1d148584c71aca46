"""What the demo and the closed loop share: the throwaway redis-server and the stand-in they
run against, the worker's settings, the ``ackworker`` processes they run, and the frame that
stops every process however a run ends.

The processes themselves are :mod:`worker.dev.sandbox`'s; each runs in its own session, so a
terminal's Ctrl-C reaches only the demo, which then stops them in order.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

import redis

from worker.dev.sandbox import (
    Child,
    ChildOptions,
    Children,
    MockApiProcess,
    RedisServer,
    clean_env,
    poll,
    retrying,
)

T = TypeVar("T")

PREFIX = "demo"
TASKS, DEAD, RECONCILE = f"{PREFIX}:tasks", f"{PREFIX}:dead", f"{PREFIX}:reconcile"
ACCESS_KEY_ID, ACCESS_KEY_SECRET = "testid", "testsecret"  # the stand-in's defaults
# Mild weather: a few throttling and 5xx answers, a little latency; reproducible.
MOCK_FAULTS = (
    *("--throttle-rate", "0.03", "--error-rate", "0.03"),
    *("--latency-ms", "20", "--jitter-ms", "10", "--fault-seed", "1"),
)
WORKER_SETTINGS = {
    "ACKWORKER_KEY_PREFIX": PREFIX,
    "ACKWORKER_RATE_LIMIT": "50",
    "ACKWORKER_LINGER_MS": "100",
    "ACKWORKER_CLAIM_IDLE_MS": "5000",
}
STOP_TIMEOUT_S = 40.0  # above the worker's default 25 s shutdown grace


class DemoError(Exception):
    """The demo could not finish; ``str()`` is the one-line reason shown."""


OPTIONS = ChildOptions(new_session=True, grace_s=STOP_TIMEOUT_S, error=DemoError)


# --- redis-server, the stand-in and ackworker --------------------------------------------


def start_redis(procs: Children, workdir: Path) -> str:
    """Start a throwaway redis-server in ``workdir``; returns its URL. Tries another port
    if the one found free was taken before redis-server bound it."""

    def start() -> RedisServer:
        return RedisServer(workdir, log_dir=workdir, options=OPTIONS)

    return procs.adopt(retrying(start, attempts=3, error=DemoError)).url


def start_mock_api(
    procs: Children, workdir: Path, log: Path, count: int
) -> tuple[MockApiProcess, list[str]]:
    """Start ``ackworker mock-api`` seeded with ``count`` numbers; it and the numbers."""
    seed_out = workdir / "seeded.txt"
    flags = ["--host", "127.0.0.1", "--seed", str(count), "--seed-out", str(seed_out)]
    flags += [*MOCK_FAULTS, "--access-key-id", ACCESS_KEY_ID]
    flags += ["--access-key-secret", ACCESS_KEY_SECRET]
    name = "the stand-in (ackworker mock-api)"
    api = procs.adopt(MockApiProcess(name, flags, log=log, options=OPTIONS))
    seeded = poll(
        lambda: _seeded(seed_out, count), timeout_s=10, what=f"{seed_out}", error=DemoError
    )
    return api, seeded


def _seeded(path: Path, count: int) -> list[str] | None:
    lines = path.read_text().split() if path.exists() else []
    return lines if len(lines) >= count else None


def worker_env(redis_url: str, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of ``ackworker`` against the demo's servers; ``extra`` wins."""
    return clean_env(
        ACKWORKER_REDIS_URL=redis_url,
        ACKWORKER_ENDPOINT=api_url,
        ALIBABA_CLOUD_ACCESS_KEY_ID=ACCESS_KEY_ID,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=ACCESS_KEY_SECRET,
        **{**WORKER_SETTINGS, **extra},
    )


def start_ackworker(
    procs: Children, command: str, name: str, log: Path, env: dict[str, str]
) -> Child:
    """Start ``ackworker <command>`` with its output in ``log``."""
    return procs.start(name, [sys.executable, "-m", "worker", command], env, log=log)


def wait_while_running(
    children: Sequence[Child], done: Callable[[], bool], *, timeout_s: float, what: str
) -> None:
    """Wait until ``done()``; DemoError as soon as one of ``children`` exits, or after
    ``timeout_s`` seconds."""

    def probe() -> bool | None:
        for child in children:
            child.check_alive()
        return True if done() else None

    poll(probe, timeout_s=timeout_s, what=what, error=DemoError)


def stop_cleanly(child: Child) -> None:
    """SIGTERM ``child``; DemoError unless it exits 0 within :data:`STOP_TIMEOUT_S`."""
    child.signal(signal.SIGTERM)
    code = child.wait_exit(STOP_TIMEOUT_S)
    if code != 0:
        raise DemoError(f"{child.name} exited with code {code} after SIGTERM; see {child.log}")


# --- the frame ---------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: stop the way Ctrl-C does."""
    raise KeyboardInterrupt


def supervise(label: str, run: Callable[[Path, Children], T], finish: Callable[[T], int]) -> int:
    """``run`` in a scratch directory, every process it starts stopped however it ends, then
    ``finish`` on its result; the exit code (1 when it failed, 130 when interrupted)."""
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix=f"ackworker-{label.replace(' ', '-')}-") as tmp:
        procs = Children(Path(tmp), OPTIONS)
        try:
            result = run(Path(tmp), procs)
        except DemoError as exc:
            print(f"{label} failed: {exc}", file=sys.stderr)
            return 1
        except (redis.RedisError, OSError) as exc:
            print(f"{label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{label} interrupted: stopping what it started", file=sys.stderr)
            return 130
        finally:
            _stop_uninterrupted(procs)
    return finish(result)


def _stop_uninterrupted(procs: Children) -> None:
    """Stop every child; signals are ignored meanwhile."""
    # A second Ctrl-C must not abandon children halfway; stopping each is bounded anyway.
    previous = (
        signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    try:
        procs.stop_all()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
