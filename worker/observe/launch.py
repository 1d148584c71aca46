"""Watching a worker: the ``worker.stats`` loop always, the HTTP endpoint when configured.

Both run in the worker's task group, so they start with its pipeline and are cancelled with
it; neither can stop the worker once started (Redis errors are reported, not raised).
"""

from __future__ import annotations

from anyio.abc import TaskGroup

from worker.clock import Clock
from worker.config.settings import Settings
from worker.observe.endpoint import build_app, serve_http
from worker.observe.reporter import StatsReporter
from worker.observe.view import WorkerView


async def start_watching(tg: TaskGroup, settings: Settings, view: WorkerView, clock: Clock) -> None:
    """Start the stats loop and, if ``http_port`` is set, wait until the endpoint listens."""
    tg.start_soon(StatsReporter(view, settings.stats_interval_s, clock).run)
    if settings.http_port is not None:
        app = build_app(view)
        await tg.start(serve_http, app, settings.http_host, settings.http_port)
