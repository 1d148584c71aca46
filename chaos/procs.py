"""The processes a scenario runs: redis-server, the stand-in and workers, all on loopback.

A :class:`Stage` owns every process it starts and kills what is still running when it
closes, whatever happened. Nothing here waits a fixed time for a condition: :func:`wait_until`
polls with a deadline, and every loop is bounded by one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import redis

# Re-exported: the rest of the package imports them from here.
from worker.dev.sandbox import clean_env as clean_env
from worker.dev.sandbox import free_port as free_port
from worker.store.keys import Keys

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.05
"""How often conditions are re-checked while waiting for them."""


class ChaosError(AssertionError):
    """A scenario could not go on: a deadline passed or a process misbehaved."""


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Raises after ``timeout_s``."""
    started = time.monotonic()
    deadline = started + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise ChaosError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic() - started


def hold_for(duration_s: float, every_s: float, sample: Callable[[], None]) -> None:
    """Call ``sample`` every ``every_s`` seconds for ``duration_s`` (a fault window)."""
    deadline = time.monotonic() + duration_s
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        if now >= next_at:
            sample()
            next_at = now + every_s
        time.sleep(min(POLL_S, max(0.0, deadline - now)))


class Proc:
    """A child process whose output goes to files in the stage's directory."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.err_path = workdir / f"{name}.err"
        self._out = self.log_path.open("wb")
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self._out, stderr=self._err, env=dict(env), cwd=REPO
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to exit; its exit code."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ChaosError(f"{self.name} did not exit within {timeout_s:g} s") from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after 10 s; close the log files."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        self._err.close()

    def output(self) -> str:
        """Everything the process wrote, stdout then stderr."""
        return self.log_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def fd_count(self) -> int:
        return int(psutil.Process(self.proc.pid).num_fds())


class RedisProc(Proc):
    """A throwaway redis-server on a free loopback port; :meth:`restart` keeps port and dir."""

    def __init__(self, workdir: Path, name: str, *extra: str, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ChaosError("redis-server not found: run 'make setup'")
        self.port = free_port()
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self._args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if "--appendonly" not in extra:
            self._args += ["--appendonly", "no"]
        self._args += ["--dir", str(self.workdir), *extra]
        if password is not None:
            self._args += ["--requirepass", password]
        super().__init__(name, self._args, workdir, os.environ)
        self._wait_answers()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def _answers(self) -> bool:
        if not self.alive():
            raise ChaosError(f"redis-server {self.name} exited with {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # Still loading the AOF answers -LOADING; a password server answers -NOAUTH.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def _wait_answers(self) -> None:
        wait_until(self._answers, timeout_s=20, what=f"redis-server on port {self.port}")

    def restart(self) -> None:
        """Start the same server again (same port, dir and options) after it stopped."""
        if self.alive():
            raise ChaosError(f"{self.name} is still running")
        self.proc = subprocess.Popen(self._args, stdout=self._out, stderr=self._err, cwd=REPO)
        self._wait_answers()


class MockApiProc(Proc):
    """``python -m worker mock-api --port 0`` (or another stand-in module) and its admin API."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        flags: list[str],
        *,
        module: str = "worker",
        ca_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        args = [PYTHON, "-m", module, "mock-api", "--port", "0", *flags]
        if module != "worker":
            args = [PYTHON, "-m", module, "--port", "0", *flags]
        super().__init__(name, args, workdir, env or clean_env())
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.url = ""
        wait_until(self._listening, timeout_s=30, what=f"{name} listening")

    def _listening(self) -> bool:
        if not self.alive():
            raise ChaosError(f"{self.name} exited: {self.output()[-500:]}")
        for line in self.log_path.read_text().splitlines():
            if line.startswith("mock-api listening on "):
                self.url = line.rsplit(" ", 1)[1]
                return True
        return False

    def _call(self, method: str, path: str, body: object | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30, context=self._ssl) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_admin/stats")
        return result

    def faults(self, **changes: object) -> None:
        self._call("POST", "/_admin/faults", changes)

    def reset_stats(self) -> None:
        self._call("POST", "/_admin/reset-stats", {})

    def seed(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 100_000):
            self._call("POST", "/_admin/seed", {"ids": ids[start : start + 100_000]})

    def keys(self, keys: list[dict[str, str]]) -> None:
        self._call("POST", "/_admin/keys", {"keys": keys})

    def confirmed(self) -> set[str]:
        return set(self._call("GET", "/_admin/confirmed")["ids"])

    def throttled(self) -> int:
        return int(self.stats()["errors_by_code"].get("Throttling.User", 0))


class WorkerProc(Proc):
    """``python -m worker run`` with JSON log lines in a file."""

    def __init__(self, workdir: Path, name: str, env: Mapping[str, str]) -> None:
        super().__init__(name, [PYTHON, "-m", "worker", "run"], workdir, env)

    def events(self) -> Iterator[dict[str, Any]]:
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and line.endswith("}"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def has(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def started(self) -> bool:
        if not self.alive():
            raise ChaosError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
        return self.has("worker.started")

    def tail(self) -> str:
        return self.output()[-600:]


def worker_env(
    redis_url: str, prefix: str, endpoint: str, consumer: str, **extra: str
) -> dict[str, str]:
    """A worker's environment: test credentials, small batches, a quick claim; ``extra`` wins."""
    values = {
        "ACKWORKER_REDIS_URL": redis_url,
        "ACKWORKER_KEY_PREFIX": prefix,
        "ACKWORKER_CONSUMER": consumer,
        "ACKWORKER_ENDPOINT": endpoint,
        "ACKWORKER_BATCH_SIZE": "20",
        "ACKWORKER_LINGER_MS": "20",
        "ACKWORKER_CONCURRENCY": "4",
        "ACKWORKER_RATE_LIMIT": "200",
        "ACKWORKER_CLAIM_IDLE_MS": "1000",
        "ACKWORKER_SHUTDOWN_GRACE_S": "10",
        "ACKWORKER_STATS_INTERVAL_S": "5",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "testid",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "testsecret",
    }
    values.update(extra)
    return clean_env(**values)


class Stage:
    """The processes of one scenario run, in ``workdir``; all killed when it closes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def __enter__(self) -> Stage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def redis(self, *extra: str, name: str = "redis", password: str | None = None) -> RedisProc:
        proc = RedisProc(self.workdir, name, *extra, password=password)
        self.procs.append(proc)
        return proc

    def mock_api(self, *flags: str, name: str = "mock-api", **options: Any) -> MockApiProc:
        try:
            proc = MockApiProc(self.workdir, name, list(flags), **options)
        except BaseException:
            raise
        self.procs.append(proc)
        return proc

    def worker(self, name: str, env: Mapping[str, str], *, wait: bool = True) -> WorkerProc:
        proc = WorkerProc(self.workdir, name, env)
        self.procs.append(proc)
        if wait:
            wait_until(proc.started, timeout_s=30, what=f"{name} started")
        return proc


def ensure_group(client: redis.Redis, keys: Keys) -> None:
    """Create the task stream and group as a producer would (idempotent)."""
    try:
        client.xgroup_create(keys.tasks, keys.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def enqueue(client: redis.Redis, keys: Keys, entries: list[dict[str, str | bytes]]) -> None:
    """XADD ``entries`` (field maps) in pipelined chunks of 1000."""
    ensure_group(client, keys)
    for start in range(0, len(entries), 1000):
        with client.pipeline(transaction=False) as pipe:
            for fields in entries[start : start + 1000]:
                pipe.xadd(keys.tasks, fields)  # type: ignore[arg-type]
            pipe.execute()


def numbers(count: int, tag: str) -> list[str]:
    """``count`` distinct 32-hex task-detail numbers (``tag`` keeps scenarios apart)."""
    head = f"{zlib.crc32(tag.encode()) & 0xFFFFFF:06x}"
    return [f"{head}{os.getpid() % 0xFFFF:04x}{i:022x}" for i in range(count)]
