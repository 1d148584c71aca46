"""Run the stand-in in-process: :func:`start_mock_api` / :func:`serve_mock_api`.

Used by the CLI, the tests and the benchmarks::

    async with serve_mock_api(faults=Faults(throttle_rate=0.1)) as api:
        api.state.seed(["2659c29493e94416b297a7691340ccc4"])
        ...  # point a client at api.url
        assert api.stats()["confirmed_more_than_once"] == 0
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

from aiohttp import web

from worker.dev.mockapi.admin import full_stats
from worker.dev.mockapi.app import MockService, build_app
from worker.dev.mockapi.auth import DEFAULT_CREDENTIALS, AcceptedKey, Authenticator
from worker.dev.mockapi.faults import FaultInjector, Faults
from worker.dev.mockapi.state import TaskStore

SHUTDOWN_TIMEOUT_S = 5.0
"""How long shutdown waits for requests still being answered before cancelling them."""


class MockApi:
    """A running stand-in. ``state`` and ``faults`` are live: change them at any time."""

    def __init__(self, service: MockService, runner: web.AppRunner, host: str, port: int) -> None:
        self._service = service
        self._runner = runner
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{port}"
        """Base URL, e.g. ``http://127.0.0.1:8790`` (no trailing slash)."""
        self.endpoint = f"{url_host}:{port}"
        """``host:port``, what the official SDKs take as their endpoint or domain."""

    @property
    def state(self) -> TaskStore:
        """The task store: seed it, inspect what was confirmed."""
        return self._service.store

    @property
    def faults(self) -> Faults:
        """The live fault settings (``faults.update({...})`` validates)."""
        return self._service.injector.faults

    @property
    def verifier(self) -> Authenticator:
        """Authentication; ``verifier.replace_keys([...])`` rotates credentials."""
        return self._service.verifier

    def stats(self) -> dict[str, object]:
        """The same document ``GET /_admin/stats`` answers."""
        service = self._service
        return full_stats(service.stats, service.store, service.injector)

    async def aclose(self) -> None:
        """Stop listening, release hung requests, wait (bounded) for the rest."""
        self._service.closing.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> MockApi:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def start_mock_api(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    keys: AcceptedKey | Iterable[AcceptedKey] = DEFAULT_CREDENTIALS,
    faults: Faults | None = None,
    state: TaskStore | None = None,
    fault_seed: int | None = None,
    access_log: bool = False,
) -> MockApi:
    """Start a stand-in listening on ``host:port`` (0 picks a free port).

    ``keys`` are the accepted credentials; ``fault_seed`` makes fault decisions
    reproducible. Raises ``OSError`` when the address cannot be bound. Close it with
    ``aclose()`` or use it as an async context manager.
    """
    key_list = [keys] if isinstance(keys, AcceptedKey) else list(keys)
    injector = FaultInjector(faults, rng=random.Random(fault_seed))
    # The verifier reads the stand-in's clock, which runs clock_offset_s ahead of ours.
    verifier = Authenticator(key_list, clock=lambda: time.time() + injector.faults.clock_offset_s)
    service = MockService(store=state or TaskStore(), injector=injector, verifier=verifier)
    # No access log by default: one log line per request would cost more than answering.
    log_options: dict[str, Any] = {} if access_log else {"access_log": None}
    runner = web.AppRunner(
        build_app(service),
        handler_cancellation=True,  # a hung request ends when its client goes away
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        **log_options,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return MockApi(service, runner, host, bound_port)


@asynccontextmanager
async def serve_mock_api(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    keys: AcceptedKey | Iterable[AcceptedKey] = DEFAULT_CREDENTIALS,
    faults: Faults | None = None,
    state: TaskStore | None = None,
    fault_seed: int | None = None,
    access_log: bool = False,
) -> AsyncIterator[MockApi]:
    """:func:`start_mock_api` as an async context manager that always shuts down."""
    api = await start_mock_api(
        host=host,
        port=port,
        keys=keys,
        faults=faults,
        state=state,
        fault_seed=fault_seed,
        access_log=access_log,
    )
    try:
        yield api
    finally:
        await api.aclose()
