"""The HTTP endpoint over real loopback HTTP, with a worker on the test's redis-server."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.conftest import PYTHON, RedisServer, free_port, worker_env
from tests.harness import (
    FAST_POLICY,
    ScriptedApi,
    drained,
    make_settings,
    running_worker,
    wait_for,
)
from worker.api.client import AckResult
from worker.clock import SYSTEM_CLOCK
from worker.entries import DEFAULT_ACCOUNT, Holdings
from worker.errors import AuthError, ConfigError, PermanentApiError, ServerError, ThrottledError
from worker.observe.endpoint import build_app, serve_http
from worker.observe.view import WorkerView
from worker.pipeline.lanes import AccountClient, WorkerParts
from worker.pipeline.runner import Worker
from worker.pipeline.sendgate import SendGate
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.totals import ACKNOWLEDGE, POLL, Totals

pytestmark = pytest.mark.anyio

IDS = [f"{i:032x}" for i in range(1, 31)]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(port: int, path: str) -> tuple[int, str]:
    """GET ``http://127.0.0.1:<port><path>``: status and body."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def get_json(port: int, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.json()


async def scrape(port: int) -> Samples:
    """``/metrics`` parsed by prometheus-client's own parser: sample → value."""
    status, text = await get(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_healthz_and_readyz_answer_while_running(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    port = free_port()
    settings = make_settings(redis_server.url, prefix, http_port=port)
    async with running_worker(settings, redis, ScriptedApi()):
        assert await get_json(port, "/healthz") == (200, {"status": "ok"})
        assert await get_json(port, "/readyz") == (200, {"ready": True})


async def test_readyz_is_503_while_credentials_are_refused(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    refused = True

    def behave(ids: Sequence[str], n: int) -> AckResult:
        if refused:
            raise AuthError("InvalidAccessKeyId.NotFound", "no such key", request_id=f"r{n}")
        return AckResult(len(set(ids)), f"r{n}")

    port = free_port()
    await enqueue(redis, Keys(prefix), IDS[:3])
    settings = make_settings(redis_server.url, prefix, http_port=port)
    async with running_worker(settings, redis, ScriptedApi(behave)):

        async def paused() -> bool:
            return (await get(port, "/readyz"))[0] == 503

        await wait_for(paused, what="readyz 503")
        assert await get_json(port, "/readyz") == (
            503,
            {"ready": False, "reason": "sending_paused", "detail": "InvalidAccessKeyId.NotFound"},
        )
        assert value(await scrape(port), "ackworker_sending_paused") == 1
        refused = False  # the operator fixed the key: the next probe gets through
        await wait_for(lambda: drained(redis, prefix), what="backlog settled after the fix")
        assert await get_json(port, "/readyz") == (200, {"ready": True})


def _behave_with_every_outcome(bad: str, unknown: str) -> ScriptedApi:
    """First call 503, second throttled; ``bad`` is rejected, ``unknown`` never counted.

    Like the service, ``Result`` counts only numbers it newly confirms. Calls are numbered
    here, as they are answered: ScriptedApi's own number is read after a checkpoint, so two
    concurrent calls may both see the same one.
    """
    confirmed: set[str] = set()
    answered = itertools.count(1)

    def behave(ids: Sequence[str], _n: int) -> AckResult:
        n = next(answered)
        if n == 1:
            raise ServerError("ServiceUnavailable", "busy", request_id=f"r{n}")
        if n == 2:
            raise ThrottledError("Throttling.User", "slow down", request_id=f"r{n}")
        if bad in ids:
            raise PermanentApiError("InvalidParameter", "bad number", request_id=f"r{n}")
        new = set(ids) - confirmed - {unknown}
        confirmed.update(new)
        return AckResult(len(new), f"r{n}")

    return ScriptedApi(behave)


async def test_metrics_count_what_the_run_did(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    bad, unknown = IDS[3], IDS[17]
    await enqueue(redis, keys, IDS[:20])
    await enqueue(redis, keys, IDS[:2])  # duplicates: ride along or settle without a request
    await redis.xadd(keys.tasks, {"task_no": "no id"})
    api = _behave_with_every_outcome(bad, unknown)
    port = free_port()
    settings = make_settings(redis_server.url, prefix, http_port=port)
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
        samples = await scrape(port)
    t = worker.totals
    print("DEBUG", t, api.calls)
    assert value(samples, "ackworker_items_total", outcome="confirmed") == 18
    assert value(samples, "ackworker_items_total", outcome="duplicate") == 2
    assert value(samples, "ackworker_items_total", outcome="shortfall") == 1
    assert value(samples, "ackworker_items_total", outcome="dead") == 2
    assert value(samples, "ackworker_dead_items_total", reason="rejected") == 1
    assert value(samples, "ackworker_dead_items_total", reason="invalid_id") == 1
    assert value(samples, "ackworker_retries_total", code="ServiceUnavailable") == 1
    assert value(samples, "ackworker_retries_total", code="Throttling.User") == 1
    assert value(samples, "ackworker_fleet_pauses_total") == 1
    assert value(samples, "ackworker_batches_total") == t.batches
    acknowledged = value(
        samples, "ackworker_requests_total", action="acknowledge", account="default"
    )
    assert acknowledged == t.requests == len(api.calls)
    assert value(samples, "ackworker_requests_total", action="poll", account="default") == 0
    assert value(samples, "ackworker_request_duration_seconds_count") == len(api.calls)
    assert value(samples, "ackworker_request_duration_seconds_bucket", le="+Inf") == len(api.calls)
    assert value(samples, "ackworker_request_duration_seconds_sum") >= 0
    assert value(samples, "ackworker_requests_in_flight") == 0
    assert value(samples, "ackworker_rate_limit_wait_seconds_total") == pytest.approx(t.rate_wait_s)
    # The throttling answer cut the fleet's rate below the limit.
    assert value(samples, "ackworker_effective_rate_requests_per_second") < 1000
    assert value(samples, "ackworker_rate_limit_requests_per_second") == 1000
    assert value(samples, "ackworker_backlog_entries") == 0
    assert value(samples, "ackworker_pending_entries") == 0
    assert value(samples, "ackworker_redis_up") == 1
    assert value(samples, "ackworker_sending_paused") == 0
    assert value(samples, "ackworker_held_entries") == 0
    assert ("process_cpu_seconds_total", ()) in samples


async def test_endpoint_is_off_by_default(
    redis_server: RedisServer, redis: Redis, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis_server.url, prefix)
    assert settings.http_port is None
    assert settings.http_host == "127.0.0.1"
    async with running_worker(settings, redis, ScriptedApi()):
        pass
    # Nothing listens for this process: no "http.listening" event was logged.
    assert "http.listening" not in capsys.readouterr().out


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as /proc shows them) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        lines = path.read_text().splitlines()[1:] if path.exists() else []
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, port_hex = local.rpartition(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.append(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
async def test_endpoint_binds_loopback_by_default(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    port = free_port()
    settings = make_settings(redis_server.url, prefix, http_port=port)
    async with running_worker(settings, redis, ScriptedApi()):
        assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert _listening_addresses(port) == []  # closed with the worker


@asynccontextmanager
async def serving(view: WorkerView) -> AsyncIterator[int]:
    """Serve ``view`` alone (no pipeline) on a free loopback port."""
    port = free_port()
    async with anyio.create_task_group() as tg:
        await tg.start(serve_http, build_app(view), "127.0.0.1", port)
        yield port
        tg.cancel_scope.cancel()


def _view(redis: Redis, prefix: str) -> WorkerView:
    gate = SendGate(FAST_POLICY, SYSTEM_CLOCK, lambda: None)
    keys = Keys(prefix)
    return WorkerView(
        redis, keys, Totals(), Holdings(), {DEFAULT_ACCOUNT: gate}, anyio.Event(), 10.0
    )


async def test_requests_are_exposed_by_action_for_every_account(redis: Redis, prefix: str) -> None:
    view = _view(redis, prefix)
    gate = view.gates[DEFAULT_ACCOUNT]
    view.gates = {DEFAULT_ACCOUNT: gate, "eu": gate, "us": gate}  # us sends nothing
    for _ in range(3):
        view.totals.count_request(ACKNOWLEDGE)
    view.totals.count_request(POLL, "eu")
    async with serving(view) as port:
        samples = await scrape(port)
    requests = {
        pairs: v for (name, pairs), v in samples.items() if name == "ackworker_requests_total"
    }
    # Every action of every account, 0 when none was sent: no series appears out of nothing.
    assert requests == {
        (("account", "default"), ("action", "acknowledge")): 3,
        (("account", "default"), ("action", "poll")): 0,
        (("account", "eu"), ("action", "acknowledge")): 0,
        (("account", "eu"), ("action", "poll")): 1,
        (("account", "us"), ("action", "acknowledge")): 0,
        (("account", "us"), ("action", "poll")): 0,
    }


async def test_readyz_is_503_when_redis_is_unreachable(prefix: str) -> None:
    dead_redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    view = _view(dead_redis, prefix)
    view.redis_timeout_s = 0.5
    try:
        async with serving(view) as port:
            status, body = await get_json(port, "/readyz")
            samples = await scrape(port)
    finally:
        await dead_redis.aclose()
    assert status == 503
    assert body["reason"] == "redis_unavailable"
    assert "Error" in body["detail"]
    assert value(samples, "ackworker_redis_up") == 0
    assert not any(name == "ackworker_backlog_entries" for name, _ in samples)


async def test_readyz_is_503_while_stopping(redis: Redis, prefix: str) -> None:
    view = _view(redis, prefix)
    async with serving(view) as port:
        assert (await get(port, "/readyz"))[0] == 200
        view.stopping.set()
        assert await get_json(port, "/readyz") == (
            503,
            {"ready": False, "reason": "stopping", "detail": "draining after a signal"},
        )


async def test_a_busy_port_is_a_config_error(redis: Redis, prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="ACKWORKER_HTTP_PORT"):
            await serve_http(build_app(_view(redis, prefix)), "127.0.0.1", port)


def _run_env(redis_server: RedisServer, prefix: str, port: int) -> dict[str, str]:
    return worker_env(
        ACKWORKER_REDIS_URL=redis_server.url,
        ACKWORKER_KEY_PREFIX=prefix,
        ACKWORKER_ENDPOINT="http://127.0.0.1:1",
        ACKWORKER_HTTP_PORT=str(port),
        ALIBABA_CLOUD_ACCESS_KEY_ID="testid",
        ALIBABA_CLOUD_ACCESS_KEY_SECRET="testsecret",
    )


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_ackworker_run_serves_the_endpoint_until_sigterm(
    redis_server: RedisServer, prefix: str
) -> None:
    port = free_port()
    command = [PYTHON, "-m", "worker", "run"]
    env = _run_env(redis_server, prefix, port)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            events = (json.loads(line) for line in proc.stdout)
            listening = next(e for e in events if e["event"] == "http.listening")
            assert (listening["host"], listening["port"]) == ("127.0.0.1", port)
            assert _http_get(port, "/healthz")[0] == 200
            assert _http_get(port, "/readyz") == (200, '{"ready": true}')
            status, text = _http_get(port, "/metrics")
            assert status == 200
            assert "ackworker_backlog_entries 0.0" in text
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()


def test_ackworker_run_exits_2_when_the_port_is_taken(
    redis_server: RedisServer, prefix: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [PYTHON, "-m", "worker", "run"],
            env=_run_env(redis_server, prefix, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert f"ACKWORKER_HTTP_PORT: cannot listen on 127.0.0.1:{port}" in done.stderr


async def test_healthz_answers_while_redis_is_still_awaited_at_start(prefix: str) -> None:
    port = free_port()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(dead_redis, prefix, http_port=port)
    redis = Redis.from_url(dead_redis)
    parts = WorkerParts(
        redis, Keys(prefix), FAST_POLICY, {DEFAULT_ACCOUNT: AccountClient(ScriptedApi())}
    )
    worker = Worker(settings, parts)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)

            async def alive() -> bool:
                try:
                    return (await get(port, "/healthz"))[0] == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(alive, what="/healthz while Redis is unreachable")
            status, body = await get_json(port, "/readyz")
            assert status == 503
            assert body["reason"] == "redis_unavailable"
            worker.request_stop()  # stops waiting for Redis, never starts the pipeline
    finally:
        await redis.aclose()
    assert worker.totals.batches == 0
