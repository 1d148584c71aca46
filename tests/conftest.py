"""Shared fixtures: a real redis-server on a free loopback port, started by the tests.

The machine's shared Redis on 6379 is never touched. One server serves the session; every
test gets its own key prefix, so tests never need to flush anything.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from worker.dev import sandbox

REPO = Path(__file__).resolve().parent.parent
free_port = sandbox.free_port
worker_env = sandbox.clean_env  # a subprocess environment without stray settings
_prefixes = itertools.count()


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


class RedisServer:
    """A throwaway redis-server process."""

    def __init__(self, port: int, workdir: str, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run 'make setup' (installs redis-server)")
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", workdir, *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, timeout_s=10, what=f"redis-server on port {port}")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"redis-server on port {self.port} exited with {self.proc.returncode}"
            )
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                # A server that wants a password answers -NOAUTH: it is up all the same.
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="ackworker-redis-") as workdir:
        for attempt in range(5):
            try:
                server = RedisServer(free_port(), workdir)
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        yield server
        server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{os.getpid()}x{next(_prefixes)}"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


PYTHON = sys.executable
