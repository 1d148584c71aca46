"""Child processes: a throwaway redis-server, the stand-in, and the programs measured.

Every child is started through :class:`Processes`, in its own session with its output in a
log file, and :meth:`Processes.stop_all` stops each one (SIGTERM, then SIGKILL) however the
scenario ended. :func:`stack` is the usual way in: a fresh Redis and a seeded stand-in.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis

# Re-exported: the rest of the package imports them from here.
from worker.dev.sandbox import clean_env as clean_env
from worker.dev.sandbox import free_port as free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ACCESS_KEY_ID, ACCESS_KEY_SECRET = "testid", "testsecret"  # the stand-in's defaults
STOP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"mock-api listening on (http://\S+)")


class BenchError(Exception):
    """A scenario could not be measured; ``str()`` says why."""


def poll_until(
    probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.02
) -> T:
    """Call ``probe`` until it returns a value; BenchError after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
    return value


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a child's log, for error messages."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


def stop(proc: subprocess.Popen[bytes], *, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``timeout_s``; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class Processes:
    """The children of one scenario run, logging into ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``args`` (cwd: the repository) with output to ``<workdir>/<name>.log``."""
        with self.log(name).open("wb") as sink:
            proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    def log(self, name: str) -> Path:
        """Where child ``name`` writes its output."""
        return self.workdir / f"{name}.log"

    def check_alive(self, proc: subprocess.Popen[bytes], name: str) -> None:
        """BenchError naming the log when ``proc`` has exited."""
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}: {log_tail(self.log(name))}")

    def stop_all(self) -> None:
        """Stop every child still running, newest first."""
        while self._started:
            stop(self._started.pop())


@dataclass(frozen=True, slots=True)
class Stack:
    """A running redis-server and stand-in, and the processes of the run."""

    procs: Processes
    redis_url: str
    redis: redis.Redis
    api_url: str

    @property
    def endpoint(self) -> str:
        """``host:port`` of the stand-in, as the official SDK takes it."""
        return self.api_url.removeprefix("http://")


def start_redis(procs: Processes) -> str:
    """Start a redis-server on a free loopback port, nothing saved; returns its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found: run 'make setup'")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(procs.workdir)]
    proc = procs.start(f"redis-{port}", args, env={})
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        poll_until(lambda: _pong(procs, proc, port, client), timeout_s=10, what="redis-server")
    finally:
        client.close()
    return f"redis://127.0.0.1:{port}/0"


def _pong(
    procs: Processes, proc: subprocess.Popen[bytes], port: int, client: redis.Redis
) -> bool | None:
    procs.check_alive(proc, f"redis-{port}")
    try:
        return bool(client.ping()) or None
    except redis.ConnectionError:
        return None


def start_mock_api(procs: Processes, seed_file: Path, flags: Sequence[str] = ()) -> str:
    """Start ``ackworker mock-api`` seeded from ``seed_file``; returns its base URL."""
    args = [PYTHON, "-m", "worker", "mock-api", "--port", "0", "--seed-file", str(seed_file)]
    args += ["--access-key-id", ACCESS_KEY_ID, "--access-key-secret", ACCESS_KEY_SECRET, *flags]
    proc = procs.start("mock-api", args, clean_env())
    log = procs.log("mock-api")

    def listening() -> str | None:
        procs.check_alive(proc, "mock-api")
        found = _LISTENING.search(log.read_text(errors="replace"))
        return found.group(1).rstrip("/") if found else None

    # Seeding a million numbers takes the stand-in several seconds.
    return poll_until(listening, timeout_s=180, what="the stand-in to listen", interval_s=0.05)


@contextmanager
def stack(workdir: Path, seed_file: Path, mock_flags: Sequence[str] = ()) -> Iterator[Stack]:
    """A fresh redis-server and stand-in in ``workdir``; every child stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    client: redis.Redis | None = None
    try:
        redis_url = start_redis(procs)
        api_url = start_mock_api(procs, seed_file, mock_flags)
        client = redis.Redis.from_url(redis_url)
        yield Stack(procs, redis_url, client, api_url)
    finally:
        if client is not None:
            client.close()
        procs.stop_all()
