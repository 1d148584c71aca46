"""The sandbox itself: throwaway redis-servers and child processes, started, awaited on a
condition with a deadline, stopped, their output collected."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import redis

from worker.dev import sandbox
from worker.dev.sandbox import Child, ChildOptions, Children, SandboxError, clean_env

PYTHON = sys.executable
# A child that runs until it is signalled: it never listens and never prints.
SILENT = [PYTHON, "-c", "import signal; signal.pause()"]


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail if the test leaves a child process of its own running."""
    before = _children()
    yield
    left = {pid for pid in _children() - before if psutil.pid_exists(pid)}
    assert not left, f"children still running: {left}"


def _can_listen_on(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        sock.listen()
        return True


@pytest.mark.usefixtures("no_leftovers")
def test_a_redis_server_starts_on_a_free_port_not_6379_and_the_port_is_free_after(
    tmp_path: Path,
) -> None:
    server = sandbox.RedisServer(tmp_path)
    try:
        assert server.port != sandbox.SHARED_REDIS_PORT
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client() as client:
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        assert not _can_listen_on(server.port)
    finally:
        assert server.stop() == 0
    assert not server.alive()
    assert not sandbox.redis_answers(server.port)
    assert _can_listen_on(server.port)


def test_free_port_passes_over_the_shared_redis_port(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([sandbox.SHARED_REDIS_PORT, 50123])

    class FakeSocket:
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *args: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    fake = SimpleNamespace(
        AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM, socket=FakeSocket
    )
    monkeypatch.setattr(sandbox, "socket", fake)
    assert sandbox.free_port() == 50123


@pytest.mark.usefixtures("no_leftovers")
def test_a_restarted_redis_server_keeps_its_port_and_data(tmp_path: Path) -> None:
    with Children(tmp_path) as procs:
        durable = ("--appendonly", "yes", "--appendfsync", "always")
        server = procs.adopt(
            sandbox.RedisServer(tmp_path, *durable, password="pw", log_dir=tmp_path)
        )
        with server.client() as client:
            client.set("kept", "yes")
        server.kill()
        server.restart()
        assert server.url == f"redis://:pw@127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.get("kept") == b"yes"
    assert not server.alive()
    assert f"port={server.port}" in (tmp_path / f"redis-{server.port}.log").read_text()


@pytest.mark.usefixtures("no_leftovers")
def test_a_stand_in_that_never_listens_fails_after_the_deadline_naming_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(SandboxError, match=r"after 0\.5 s waiting for quiet stand-in to listen"):
        sandbox.MockApiProcess("quiet stand-in", [], command=SILENT, timeout_s=0.5)


@pytest.mark.usefixtures("no_leftovers")
def test_a_child_that_exits_while_awaited_fails_at_once_with_its_code_and_output(
    tmp_path: Path,
) -> None:
    args = [PYTHON, "-c", "print('no config'); raise SystemExit(3)"]
    child = Child("crasher", args, env=clean_env(), log=tmp_path / "crasher.log")
    try:
        with pytest.raises(SandboxError, match=r"^crasher exited with code 3: no config$"):
            child.wait_ready(lambda: None, timeout_s=30, what="crasher to listen")
    finally:
        child.stop()


class Refused(Exception):
    pass


@pytest.mark.usefixtures("no_leftovers")
def test_a_wait_raises_the_callers_error() -> None:
    with Children(None, ChildOptions(error=Refused)) as procs:
        child = procs.start("silent", SILENT, clean_env())
        with pytest.raises(Refused, match=r"timed out after 0\.2 s waiting for nothing"):
            child.wait_ready(lambda: None, timeout_s=0.2, what="nothing")


def test_a_childs_output_and_events_are_collected(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "print('plain line')\n"
        'print(\'{"event": "worker.started", "n": 1}\')\n'
        "print('a complaint', file=sys.stderr)\n"
    )
    options = ChildOptions(stderr_apart=True)
    with Children(tmp_path, options) as procs:
        child = procs.start("talker", [PYTHON, "-c", script], clean_env())
        assert child.wait_exit(30) == 0
    assert child.log == tmp_path / "talker.log"
    assert (tmp_path / "talker.err").read_text() == "a complaint\n"
    assert child.output().splitlines() == [
        "plain line",
        '{"event": "worker.started", "n": 1}',
        "a complaint",
    ]
    assert child.events() == [{"event": "worker.started", "n": 1}]
    assert child.tail(2) == '{"event": "worker.started", "n": 1} | a complaint'


@pytest.mark.usefixtures("no_leftovers")
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    script = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    with Children(tmp_path, ChildOptions(grace_s=0.5, new_session=True)) as procs:
        child = procs.start("stubborn", [PYTHON, "-c", script], clean_env())
        child.wait_ready(lambda: "ready" in child.output() or None, timeout_s=30, what="ready")
        other = procs.start("other", SILENT, clean_env())
    assert not other.alive()
    assert child.proc.returncode == -signal.SIGKILL
    assert other.proc.returncode == -signal.SIGTERM
