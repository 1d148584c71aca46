"""The optional HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

Off unless ``http_port`` is set; binds ``http_host`` (default 127.0.0.1, since the metrics
and readiness reasons are for the operator, not the network). It runs as one task of the
worker's task group and stops with it: cancelling :func:`serve_http` closes the listener and
waits (bounded) for requests being answered.

- ``/healthz``: 200 whenever the event loop answers; the liveness probe.
- ``/readyz``: 200 ``{"ready": true}`` when sending is not paused, the worker is not
  stopping and Redis answers PING within ``WorkerView.redis_timeout_s``; else 503 with
  ``{"ready": false, "reason": ..., "detail": ...}``, reason ``sending_paused``,
  ``stopping`` or ``redis_unavailable``.
- ``/metrics``: see :mod:`worker.observe.metrics`.
"""

from __future__ import annotations

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from worker.errors import ConfigError
from worker.logs import get_logger
from worker.observe.metrics import CONTENT_TYPE, MetricsExporter
from worker.observe.view import WorkerView

log = get_logger("http")

SHUTDOWN_S = 2.0  # bound on finishing the requests being answered when the worker stops


class _Routes:
    def __init__(self, view: WorkerView, exporter: MetricsExporter) -> None:
        self._view = view
        self._exporter = exporter

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        reason, detail = await self._not_ready()
        if reason is None:
            return web.json_response({"ready": True})
        body = {"ready": False, "reason": reason, "detail": detail}
        return web.json_response(body, status=503)

    async def metrics(self, _request: web.Request) -> web.Response:
        body = await self._exporter.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _not_ready(self) -> tuple[str | None, str | None]:
        # Cheapest first: the two local checks need no I/O.
        view = self._view
        problem = view.sending_problem
        if problem is not None:
            return "sending_paused", problem
        if view.stopping.is_set():
            return "stopping", "draining after a signal"
        redis_problem = await view.redis_problem()
        if redis_problem is not None:
            return "redis_unavailable", redis_problem
        return None, None


def build_app(view: WorkerView) -> web.Application:
    """The endpoint's routes over one worker's view, with its own metrics registry."""
    routes = _Routes(view, MetricsExporter(view))
    app = web.Application()
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    return app


async def serve_http(
    app: web.Application,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` until cancelled; ``started()`` fires once bound.

    A port that cannot be bound is a setting problem: :class:`ConfigError`, exit 2.
    """
    # No access log: Prometheus and probes would write a line every few seconds.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"ACKWORKER_HTTP_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        log.info("http.listening", host=host, port=port)
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.move_on_after(SHUTDOWN_S + 1.0, shield=True):
            await runner.cleanup()
