"""Child processes: a throwaway redis-server, the stand-in, and the programs measured.

Every child is started through the run's :class:`~worker.dev.sandbox.Children` (the one
harness of :mod:`worker.dev.sandbox`), in its own session with its output in
``<workdir>/<name>.log``, and each one is stopped (SIGTERM, then SIGKILL after 30 s) however
the scenario ended. :func:`stack` is the usual way in: a fresh Redis and a seeded stand-in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis

from worker.dev.sandbox import ChildOptions, Children, MockApiProcess, RedisServer, poll

# Re-exported: the rest of the package imports them from here.
from worker.dev.sandbox import clean_env as clean_env
from worker.dev.sandbox import free_port as free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ACCESS_KEY_ID, ACCESS_KEY_SECRET = "testid", "testsecret"  # the stand-in's defaults
STOP_TIMEOUT_S = 30.0


class BenchError(Exception):
    """A scenario could not be measured; ``str()`` says why."""


OPTIONS = ChildOptions(cwd=REPO, new_session=True, grace_s=STOP_TIMEOUT_S, error=BenchError)
"""How the benchmarks run a child: from the repository, in its own session."""


def poll_until(
    probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.02
) -> T:
    """Call ``probe`` until it returns a value; BenchError after ``timeout_s`` seconds."""
    return poll(probe, timeout_s=timeout_s, what=what, interval_s=interval_s, error=BenchError)


@dataclass(frozen=True, slots=True)
class Stack:
    """A running redis-server and stand-in, and the processes of the run."""

    procs: Children
    redis_url: str
    redis: redis.Redis
    api_url: str

    @property
    def endpoint(self) -> str:
        """``host:port`` of the stand-in, as the official SDK takes it."""
        return self.api_url.removeprefix("http://")


@contextmanager
def stack(workdir: Path, seed_file: Path, mock_flags: Sequence[str] = ()) -> Iterator[Stack]:
    """A fresh redis-server and stand-in in ``workdir``; every child stopped on exit.

    The stand-in is seeded from ``seed_file`` and started with ``mock_flags``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with Children(workdir, OPTIONS) as procs:
        redis_url = procs.adopt(RedisServer(workdir, log_dir=workdir, options=OPTIONS)).url
        flags = ["--seed-file", str(seed_file), "--access-key-id", ACCESS_KEY_ID]
        flags += ["--access-key-secret", ACCESS_KEY_SECRET, *mock_flags]
        # Seeding a million numbers takes the stand-in several seconds.
        log = procs.log("mock-api")
        api = procs.adopt(
            MockApiProcess("mock-api", flags, log=log, options=OPTIONS, timeout_s=180)
        )
        client = redis.Redis.from_url(redis_url)
        try:
            yield Stack(procs, redis_url, client, api.url)
        finally:
            client.close()
