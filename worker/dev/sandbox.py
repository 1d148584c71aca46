"""Throwaway local processes: the one harness of the demo, the tests, the benchmarks and the
chaos suite. Every wait is on a condition with a deadline (:func:`poll`), never a sleep.

- :func:`free_port`: a free loopback port, never the shared Redis's 6379; :func:`clean_env`:
  a child's environment without stray ``ACKWORKER_*``/``ALIBABA_*`` settings.
- :class:`RedisServer`: ``redis-server`` on loopback, nothing saved, up once it answers PING,
  restartable on its port and directory; TLS, passwords, ACLs, cluster are extra arguments.
- :class:`MockApiProcess`: the stand-in (``ackworker mock-api``), up once it says where it
  listens, with its admin API.
- :class:`Child` (:mod:`worker.dev.children`): any child, its output in files, stopped with
  SIGTERM then SIGKILL; :class:`Children`: those of one run, all stopped however it ends.
  :class:`ChildOptions`: what differs between callers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis

from worker.dev.children import DEFAULTS, POLL_S

# Re-exported: callers import the whole harness from here.
from worker.dev.children import Child as Child
from worker.dev.children import ChildOptions as ChildOptions
from worker.dev.children import Children as Children
from worker.dev.children import SandboxError as SandboxError
from worker.dev.children import poll as poll
from worker.dev.children import wait_until as wait_until

T = TypeVar("T")

SHARED_REDIS_PORT = 6379
MOCK_API = (sys.executable, "-m", "worker", "mock-api")
"""``ackworker mock-api``, as the installed command would run it."""
_LISTENING = re.compile(r"mock-api listening on (https?://\S+)")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago; never the shared Redis's 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ACKWORKER_* and ALIBABA_* variables, plus
    ``extra``: a child process sees only the settings it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACKWORKER_", "ALIBABA_"))}
    env.update(extra)
    return env


def retrying(start: Callable[[], T], *, attempts: int, error: type[Exception] = SandboxError) -> T:
    """``start()``, again while it fails with ``error``, ``attempts`` times in all: a port
    found free may be taken by someone else before a server binds it."""
    for _ in range(attempts - 1):
        try:
            return start()
        except error:
            continue
    return start()


# --- redis-server ------------------------------------------------------------------------


def redis_binary(error: type[Exception] = SandboxError) -> str:
    """The path of ``redis-server``, or ``error`` saying how to get it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise error("redis-server not found: run 'make setup' (installs redis-server)")
    return binary


def redis_answers(port: int) -> bool:
    """True when the server on loopback ``port`` answers PING: ``+PONG``, or ``-NOAUTH`` from
    one that wants a password. One still loading its data answers ``-LOADING``: not yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer(Child):
    """A throwaway redis-server on loopback ``port`` (default: a free one), nothing saved
    (``--save ""``, and ``--appendonly no`` unless ``extra`` says otherwise), its data in
    ``data_dir`` and its output in ``<log_dir>/<name>.log`` (nowhere without ``log_dir``).

    Waits until it answers PING; :meth:`restart` starts it again with the same port,
    directory and options. ``password`` adds ``--requirepass`` and goes into :attr:`url`;
    ``config`` is a configuration file read first (a Sentinel's, with ``--sentinel``).
    """

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int | None = None,
        password: str | None = None,
        name: str | None = None,
        log_dir: Path | None = None,
        options: ChildOptions = DEFAULTS,
        ready_timeout_s: float = 10.0,
        config: Path | None = None,
    ) -> None:
        binary = redis_binary(options.error)
        self.port = free_port() if port is None else port
        self.password = password
        self.data_dir = data_dir
        self.ready_timeout_s = ready_timeout_s
        args = [binary, *([str(config)] if config else [])]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if "--appendonly" not in extra:
            args += ["--appendonly", "no"]
        args += ["--dir", str(data_dir), *extra]
        if password is not None:
            args += ["--requirepass", password]
        name = name or f"redis-{self.port}"
        log, err = options.files(log_dir, name)
        super().__init__(name, args, env=clean_env(), log=log, err=err, options=options)
        self._wait_answers()

    def _wait_answers(self) -> None:
        try:
            self.wait_ready(
                lambda: redis_answers(self.port) or None,
                timeout_s=self.ready_timeout_s,
                what=f"redis-server on port {self.port}",
            )
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new client of this server (close it when done)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def restart(self) -> None:
        """Start the same server again (same port, directory and options) after it stopped."""
        self.respawn()
        self._wait_answers()


# --- the stand-in ------------------------------------------------------------------------


class MockApiProcess(Child):
    """The Domain API stand-in: ``command`` (``ackworker mock-api``, or another that prints
    the same line) with ``--port 0`` and ``flags``, up once it prints ``mock-api listening
    on URL``; :attr:`url` is that URL. ``ca_file`` verifies a stand-in served over TLS."""

    def __init__(
        self,
        name: str,
        flags: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        err: Path | None = None,
        options: ChildOptions = DEFAULTS,
        command: Sequence[str] = MOCK_API,
        timeout_s: float = 30.0,
        interval_s: float = POLL_S,
        ca_file: Path | None = None,
    ) -> None:
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        args = [*command, "--port", "0", *flags]
        env = clean_env() if env is None else env
        super().__init__(name, args, env=env, log=log, err=err, options=options)
        try:
            self.url: str = self.wait_ready(
                self._listening,
                timeout_s=timeout_s,
                what=f"{name} to listen",
                interval_s=interval_s,
            )
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> str | None:
        found = _LISTENING.search(self.output())
        return found.group(1).rstrip("/") if found else None

    def admin(self, method: str, path: str, body: object | None = None) -> Any:
        """A call to the stand-in's admin API (``/_admin/...``), JSON both ways."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30, context=self._ssl) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """``GET /_admin/stats``."""
        result: dict[str, Any] = self.admin("GET", "/_admin/stats")
        return result
