"""Helpers for throwaway local processes: the demo, and the tests, benchmarks and chaos suite
that start their own redis-server and stand-in on loopback."""

from __future__ import annotations

import os
import socket

SHARED_REDIS_PORT = 6379


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
