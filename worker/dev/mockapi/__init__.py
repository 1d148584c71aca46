"""A local stand-in for the Alibaba Cloud Domain API (``ackworker mock-api``).

It authenticates requests exactly as the service does (V3 and V1 signatures, nonces,
timestamps, STS tokens), serves ``AcknowledgeTaskResult`` and ``PollTaskResult`` from an
in-memory task store, injects faults on demand, and reports what it saw under
``/_admin/``. Modules, along a request's path:

- ``server``: start and stop it in-process (:func:`start_mock_api`, :func:`serve_mock_api`)
- ``app``: the aiohttp application and the order a request goes through
- ``faults``: what can go wrong, and when it does
- ``auth``: authentication, on :mod:`worker.api.signing`
- ``actions``: the two API actions; ``state``: the task store
- ``replies``: answers and the service's error shape; ``stats``: request counters
- ``admin``: the ``/_admin/`` routes; ``main``: the command line
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.dev.mockapi.auth import DEFAULT_CREDENTIALS, AcceptedKey
    from worker.dev.mockapi.faults import Faults, InvalidFault
    from worker.dev.mockapi.server import MockApi, serve_mock_api, start_mock_api
    from worker.dev.mockapi.state import TaskStore

# Loaded on first use: worker.commands.cli imports worker.dev.mockapi.main for every command, and
# commands other than mock-api should not pay for importing the HTTP stack.
_HOMES = {
    "DEFAULT_CREDENTIALS": "worker.dev.mockapi.auth",
    "AcceptedKey": "worker.dev.mockapi.auth",
    "Faults": "worker.dev.mockapi.faults",
    "InvalidFault": "worker.dev.mockapi.faults",
    "MockApi": "worker.dev.mockapi.server",
    "TaskStore": "worker.dev.mockapi.state",
    "serve_mock_api": "worker.dev.mockapi.server",
    "start_mock_api": "worker.dev.mockapi.server",
}
__all__ = [
    "DEFAULT_CREDENTIALS",
    "AcceptedKey",
    "Faults",
    "InvalidFault",
    "MockApi",
    "TaskStore",
    "serve_mock_api",
    "start_mock_api",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
