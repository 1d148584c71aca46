"""The processes a scenario runs: redis-server, the stand-in and workers, all on loopback.

They are :mod:`worker.dev.sandbox` children with the suite's options: run from the
repository, stdout in ``<name>.log`` and stderr in ``<name>.err`` in the stage's directory,
stopped with SIGTERM and then SIGKILL after 10 s, failing with :class:`ChaosError`. A
:class:`Stage` owns every process it starts and stops what is still running when it closes,
whatever happened. Nothing here waits a fixed time for a condition: :func:`wait_until` polls
with a deadline, and every loop is bounded by one.
"""

from __future__ import annotations

import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import redis

from worker.dev import faultproxy, sandbox
from worker.dev.sandbox import MOCK_API, Child, ChildOptions, Children, MockApiProcess, RedisServer

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


OPTIONS = ChildOptions(cwd=REPO, stderr_apart=True, grace_s=10.0, error=ChaosError)
"""How the suite runs a child: from the repository, stderr apart, 10 s to stop."""


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Raises after ``timeout_s``."""
    return sandbox.wait_until(
        predicate, timeout_s=timeout_s, what=what, interval_s=POLL_S, error=ChaosError
    )


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


class MockApiProc(MockApiProcess):
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
        log, err = OPTIONS.files(workdir, name)
        command = MOCK_API if module == "worker" else (PYTHON, "-m", module)
        super().__init__(
            name,
            flags,
            env=env,
            log=log,
            err=err,
            options=OPTIONS,
            command=command,
            ca_file=ca_file,
        )

    def faults(self, **changes: object) -> None:
        self.admin("POST", "/_admin/faults", changes)

    def reset_stats(self) -> None:
        self.admin("POST", "/_admin/reset-stats", {})

    def seed(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 100_000):
            self.admin("POST", "/_admin/seed", {"ids": ids[start : start + 100_000]})

    def keys(self, keys: list[dict[str, str]]) -> None:
        self.admin("POST", "/_admin/keys", {"keys": keys})

    def confirmed(self) -> set[str]:
        return set(self.admin("GET", "/_admin/confirmed")["ids"])

    def throttled(self) -> int:
        return int(self.stats()["errors_by_code"].get("Throttling.User", 0))


class WorkerProc(Child):
    """``python -m worker <command>`` (``run`` by default) with JSON log lines in a file."""

    START_EVENT = "worker.started"

    def __init__(
        self, workdir: Path, name: str, env: Mapping[str, str], command: str = "run"
    ) -> None:
        log, err = OPTIONS.files(workdir, name)
        args = [PYTHON, "-m", "worker", command]
        super().__init__(name, args, env=env, log=log, err=err, options=OPTIONS)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def has(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def started(self) -> bool:
        """True once it logged its start event; ChaosError if it exited first."""
        self.check_alive()
        return self.has(self.START_EVENT)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def fd_count(self) -> int:
        return int(psutil.Process(self.pid).num_fds())


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


_PROXY_LISTENING = re.compile(r"faultproxy listening on ([\d.]+):(\d+) admin ([\d.]+):(\d+)")


class ProxyProc:
    """``python -m worker.dev.faultproxy`` in front of ``target`` (``HOST:PORT`` or a URL),
    a child of ``stage``; :meth:`control` changes its faults and reads its counters."""

    def __init__(self, stage: Stage, target: str, *, seed: int = 0) -> None:
        address = target.split("://", 1)[-1].split("/", 1)[0]
        args = [PYTHON, "-m", "worker.dev.faultproxy", "--seed", str(seed), "--target", address]
        self.child = stage.start("faultproxy", args, clean_env())
        found = self.child.wait_ready(
            lambda: _PROXY_LISTENING.search(self.child.output()),
            timeout_s=20,
            what="faultproxy listening",
        )
        self.host, self.port = found.group(1), int(found.group(2))
        self.admin = (found.group(3), int(found.group(4)))

    @property
    def redis_url(self) -> str:
        """A Redis URL through the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def http_url(self) -> str:
        """An HTTP endpoint through the proxy."""
        return f"http://{self.host}:{self.port}"

    def control(self, **request: Any) -> dict[str, Any]:
        """One admin request (``faults=...``, ``next=[...]``); the proxy's counters."""
        answer: dict[str, Any] = faultproxy.control(self.admin, request)
        return answer


class Stage(Children):
    """The processes of one scenario run, in ``workdir``; all stopped when it closes."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, OPTIONS)
        self.workdir: Path = workdir

    def close(self) -> None:
        self.stop_all()

    def redis(self, *extra: str, name: str = "redis", password: str | None = None) -> RedisServer:
        """A redis-server with its data in ``<workdir>/<name>``; restartable in place."""
        data_dir = self.workdir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        server = RedisServer(
            data_dir,
            *extra,
            password=password,
            name=name,
            log_dir=self.workdir,
            options=OPTIONS,
            ready_timeout_s=20,
        )
        return self.adopt(server)

    def mock_api(
        self,
        *flags: str,
        name: str = "mock-api",
        module: str = "worker",
        ca_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> MockApiProc:
        api = MockApiProc(self.workdir, name, list(flags), module=module, ca_file=ca_file, env=env)
        return self.adopt(api)

    def worker(self, name: str, env: Mapping[str, str], *, wait: bool = True) -> WorkerProc:
        proc = self.adopt(WorkerProc(self.workdir, name, env))
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
