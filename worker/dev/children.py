"""Child processes of the sandbox (use them through :mod:`worker.dev.sandbox`).

A :class:`Child` runs with its output in files, is waited for on a condition with a deadline
(:func:`poll`, never a blind sleep) and is stopped with SIGTERM, then SIGKILL after a grace;
:class:`Children` are those of one run, all stopped however it ends. :class:`ChildOptions`
holds what differs between callers: the working directory, whether a child gets its own
session, whether stderr goes to a file of its own, the grace, and the exception raised.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="Child")

POLL_S = 0.05
"""How often a condition is checked again while waiting for it."""


class SandboxError(Exception):
    """A child did not start, exited, or a wait ran out of time; ``str()`` says which."""


def poll(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = POLL_S,
    error: type[Exception] = SandboxError,
) -> T:
    """Call ``probe`` until it returns a value; ``error`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
    return value


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = POLL_S,
    error: type[Exception] = SandboxError,
) -> float:
    """Check ``predicate`` until it holds; the seconds it took. ``error`` after ``timeout_s``."""
    started = time.monotonic()
    poll(
        lambda: True if predicate() else None,
        timeout_s=timeout_s,
        what=what,
        interval_s=interval_s,
        error=error,
    )
    return time.monotonic() - started


def stop(proc: subprocess.Popen[bytes], *, grace_s: float) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``grace_s``; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@dataclass(frozen=True, slots=True)
class ChildOptions:
    """How one caller runs its children."""

    cwd: Path | None = None
    new_session: bool = False
    """Own session: a terminal's Ctrl-C reaches only the caller, which then stops the child."""
    stderr_apart: bool = False
    """stderr in ``<name>.err`` beside ``<name>.log``, rather than in the log."""
    grace_s: float = 10.0
    """How long :meth:`Child.stop` waits after SIGTERM before SIGKILL."""
    error: type[Exception] = SandboxError

    def files(self, directory: Path | None, name: str) -> tuple[Path | None, Path | None]:
        """Where child ``name`` writes stdout and stderr in ``directory`` (None: nowhere;
        a None stderr goes with stdout)."""
        if directory is None:
            return None, None
        err = directory / f"{name}.err" if self.stderr_apart else None
        return directory / f"{name}.log", err


DEFAULTS = ChildOptions()


class Child:
    """A child process: stdout in ``log`` (and stderr too, unless ``err`` is given), stdin
    empty. ``log`` None discards its output."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path | None = None,
        err: Path | None = None,
        options: ChildOptions = DEFAULTS,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log = log
        self.err = err
        self.options = options
        self.proc = self._spawn("wb")

    def _spawn(self, mode: str) -> subprocess.Popen[bytes]:
        with ExitStack() as files:
            out: IO[bytes] | int = subprocess.DEVNULL
            err: IO[bytes] | int = subprocess.STDOUT
            if self.log is not None:
                out = files.enter_context(self.log.open(mode))
            if self.err is not None:
                err = files.enter_context(self.err.open(mode))
            return subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.options.cwd,
                start_new_session=self.options.new_session,
            )

    def respawn(self) -> None:
        """Start the same command again after it stopped; its output is appended."""
        if self.alive():
            raise self.options.error(f"{self.name} is still running")
        self.proc = self._spawn("ab")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` if the child is still running."""
        if self.alive():
            self.proc.send_signal(signum)

    def output(self) -> str:
        """Everything the child wrote so far: its log, then its stderr file."""
        return "".join(
            path.read_text(errors="replace")
            for path in (self.log, self.err)
            if path is not None and path.exists()
        )

    def tail(self, lines: int = 5) -> str:
        """The last lines of the output, for error messages."""
        return " | ".join(self.output().strip().splitlines()[-lines:]) or "no output"

    def events(self) -> list[dict[str, Any]]:
        """The JSON objects with an ``event`` the child wrote, one a line (its log lines)."""
        found: list[dict[str, Any]] = []
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                found.append(event)
        return found

    def check_alive(self) -> None:
        """Raise the caller's error, with the last output, if the child has exited."""
        if self.proc.poll() is not None:
            raise self.options.error(
                f"{self.name} exited with code {self.proc.returncode}: {self.tail()}"
            )

    def wait_ready(
        self,
        probe: Callable[[], T | None],
        *,
        timeout_s: float,
        what: str,
        interval_s: float = POLL_S,
    ) -> T:
        """Call ``probe`` until it returns a value; fail at once if the child exits, and
        after ``timeout_s`` seconds."""

        def checked() -> T | None:
            self.check_alive()
            return probe()

        return poll(
            checked, timeout_s=timeout_s, what=what, interval_s=interval_s, error=self.options.error
        )

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the child to exit; its exit code, or the caller's error after the wait."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self.options.error(f"{self.name} did not exit within {timeout_s:g} s") from None

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after the grace; the exit code."""
        return stop(self.proc, grace_s=self.options.grace_s)


class Children:
    """The children of one run, started with ``options``, their output in ``workdir``
    (``<name>.log``) unless told otherwise; :meth:`stop_all`, or the end of a ``with``
    block, stops every one still running, newest first."""

    def __init__(self, workdir: Path | None, options: ChildOptions = DEFAULTS) -> None:
        self.workdir = workdir
        self.options = options
        self._started: list[Child] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def adopt(self, child: C) -> C:
        """Stop ``child`` (a redis-server, the stand-in...) with the others."""
        self._started.append(child)
        return child

    def log(self, name: str) -> Path | None:
        """Where child ``name`` writes its output by default."""
        return self.options.files(self.workdir, name)[0]

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str], *, log: Path | None = None
    ) -> Child:
        """Start ``args``; its output in ``log``, by default ``<workdir>/<name>.log``."""
        out, err = (log, None) if log is not None else self.options.files(self.workdir, name)
        return self.adopt(Child(name, args, env=env, log=out, err=err, options=self.options))

    def stop_all(self) -> None:
        """Stop every child still running, newest first (SIGTERM, then SIGKILL)."""
        while self._started:
            self._started.pop().stop()
