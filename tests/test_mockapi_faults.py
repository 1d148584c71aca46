"""Every fault of the stand-in is observable by a client; the decision logic is reproducible."""

from __future__ import annotations

import errno
import random
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import anyio
import orjson
import pytest

from tests.test_mockapi_support import (
    ACK,
    Reply,
    admin,
    ids_params,
    send,
    v1_request,
    v3_request,
)
from worker.dev.mockapi.faults import Fault, FaultInjector, Faults, InvalidFault, TokenBucket
from worker.dev.mockapi.nonces import NonceCache
from worker.dev.mockapi.server import MockApi, serve_mock_api, start_mock_api
from worker.dev.mockapi.state import TaskStore
from worker.dev.mockapi.stats import RequestStats

IDS = [f"{n:032x}" for n in range(1, 6)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=11) as server:
        server.state.seed(IDS)
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def acknowledge(
    api: MockApi, session: aiohttp.ClientSession, ids: list[str], *, timeout_s: float = 10.0
) -> Reply:
    """Send a V3 acknowledgement with a client timeout; the whole answer."""
    request = v3_request(api.endpoint, ACK, ids_params(ids))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(request.url, headers=request.headers, timeout=timeout) as response:
        return Reply(response.status, response.headers.copy(), await response.read())


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll a condition the stand-in changes on this event loop, failing after a deadline.

    The stand-in has no event to wait on for "request released", and checking costs nothing.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.01)  # a poll interval, not a wait for time to pass


# --- each fault, seen from the client -----------------------------------------------------


@pytest.mark.anyio
async def test_throttle_carries_retry_after(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"throttle_rate": 1.0, "retry_after_ms": 250})
    response = await acknowledge(api, session, IDS[:2])
    assert (response.status, response.code) == (400, "Throttling.User")
    assert response.headers["x-acs-retry-after"] == "250"
    assert api.state.pending_count == len(IDS)  # a refused request confirms nothing
    api.faults.update({"retry_after_ms": None})
    response = await acknowledge(api, session, IDS[:2])
    assert "x-acs-retry-after" not in response.headers


@pytest.mark.anyio
async def test_server_errors_alternate_503_and_500(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    api.faults.update({"error_rate": 1.0})
    seen = []
    for _ in range(4):
        response = await acknowledge(api, session, IDS[:1])
        seen.append((response.status, response.code))
    assert seen == [(503, "ServiceUnavailable"), (500, "InternalError")] * 2
    assert api.stats()["faults_injected"] == {"error_503": 2, "error_500": 2}


@pytest.mark.anyio
async def test_quota_throttles_over_the_rate(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"quota_rps": 0.001})  # one request, then the next token in 1000 s
    first = await acknowledge(api, session, IDS[:1])
    second = await acknowledge(api, session, IDS[1:2])
    assert first.status == 200
    assert (second.status, second.code) == (400, "Throttling.User")
    assert api.stats()["faults_injected"] == {"quota": 1}


@pytest.mark.anyio
async def test_reset_is_a_connection_error(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"reset_rate": 1.0})
    with pytest.raises(aiohttp.ClientConnectionError) as caught:
        await acknowledge(api, session, IDS[:1])
    assert getattr(caught.value, "errno", errno.ECONNRESET) == errno.ECONNRESET
    assert api.state.pending_count == len(IDS)


@pytest.mark.anyio
async def test_hang_makes_the_client_time_out(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"hang_rate": 1.0, "hang_s": 30.0})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await acknowledge(api, session, IDS[:1], timeout_s=0.5)
    assert time.monotonic() - started < 5.0
    # The client went away, so the stand-in stops holding the request.
    await wait_for(lambda: api.stats()["in_flight"] == 0, "the hung request to be released")
    assert api.state.pending_count == len(IDS)


@pytest.mark.anyio
async def test_hang_is_bounded(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"hang_rate": 1.0, "hang_s": 0.2})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await acknowledge(api, session, IDS[:1], timeout_s=10.0)


@pytest.mark.anyio
async def test_shutdown_releases_hung_requests(session: aiohttp.ClientSession) -> None:
    api = await start_mock_api(faults=Faults(hang_rate=1.0, hang_s=60.0))
    outcome: list[BaseException] = []

    async def hung_request() -> None:
        try:
            await acknowledge(api, session, IDS[:1], timeout_s=30.0)
        except aiohttp.ClientError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hung_request)
        await wait_for(lambda: api.stats()["in_flight"] == 1, "the request to hang")
        started = time.monotonic()
        await api.aclose()
        assert time.monotonic() - started < 3.0
    assert len(outcome) == 1


@pytest.mark.anyio
async def test_html_proxy_page(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"html_rate": 1.0})
    response = await acknowledge(api, session, IDS[:1])
    assert response.status == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert b"502 Bad Gateway" in response.body


@pytest.mark.anyio
async def test_truncated_json_after_confirming(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    api.faults.update({"truncated_rate": 1.0})
    response = await acknowledge(api, session, IDS[:2])
    assert response.status == 200
    assert response.body.startswith(b'{"RequestId"')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.body)
    assert api.state.confirmed_ids() == IDS[:2]  # it happened; only the answer was lost


@pytest.mark.anyio
async def test_drop_loses_confirmations_silently(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    api.faults.update({"drop_rate": 1.0})
    response = await acknowledge(api, session, IDS[:3])
    assert response.json()["Result"] == 0
    assert api.state.pending_ids() == IDS
    assert api.stats()["dropped_confirmations"] == 3
    api.faults.update({"drop_rate": 0.0})
    response = await acknowledge(api, session, IDS[:3])
    assert response.json()["Result"] == 3


@pytest.mark.anyio
async def test_latency(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.faults.update({"latency_ms": 150.0, "jitter_ms": 50.0})
    started = time.monotonic()
    response = await acknowledge(api, session, IDS[:1])
    assert response.status == 200
    assert time.monotonic() - started >= 0.15


@pytest.mark.anyio
async def test_admin_and_v1_see_no_transport_faults(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    api.faults.update({"reset_rate": 1.0, "html_rate": 1.0, "latency_ms": 5000.0})
    reply = await admin(session, api.url, "stats")
    assert reply.status == 200
    api.faults.update({"reset_rate": 0.0, "html_rate": 0.0, "latency_ms": 0.0})
    api.faults.update({"throttle_rate": 1.0})
    answer = await send(session, v1_request(api.endpoint, ACK, ids_params(IDS[:1])))
    assert answer.code == "Throttling.User"


# --- decision logic, without a server -------------------------------------------------------


def decisions(seed: int, count: int) -> list[Fault | None]:
    faults = Faults(throttle_rate=0.3, reset_rate=0.1, error_rate=0.2, html_rate=0.1)
    injector = FaultInjector(faults, rng=random.Random(seed))
    return [injector.transport_fault() or injector.service_fault() for _ in range(count)]


def test_fault_seed_makes_runs_reproducible() -> None:
    assert decisions(5, 200) == decisions(5, 200)
    assert decisions(5, 200) != decisions(6, 200)
    kinds = set(decisions(5, 200))
    assert {None, Fault.RESET, Fault.HTML, Fault.THROTTLE, Fault.ERROR_503} <= kinds


def test_no_faults_draw_no_random_numbers() -> None:
    class Exploding(random.Random):
        def random(self) -> float:
            raise AssertionError("drew a random number with every fault off")

    injector = FaultInjector(Faults(), rng=Exploding())
    assert injector.transport_fault() is None
    assert injector.service_fault() is None
    assert injector.delay_s() == 0.0
    assert injector.drop_decider() is None
    assert not injector.truncates()


def test_token_bucket_on_an_explicit_clock() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 10.0  # the burst stays at one second's worth
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_faults_update_is_all_or_nothing() -> None:
    faults = Faults()
    with pytest.raises(InvalidFault) as caught:
        faults.update({"throttle_rate": 0.5, "error_rate": 2})
    assert caught.value.field == "error_rate"
    assert faults == Faults()
    with pytest.raises(InvalidFault):
        faults.update({"clock_offset_s": float("inf")})


def test_nonce_cache_expires_and_is_capped() -> None:
    now = [0.0]
    cache = NonceCache(ttl_s=900.0, max_entries=3, clock=lambda: now[0])
    assert cache.add("a")
    assert not cache.add("a")
    now[0] = 901.0
    assert cache.add("a")  # older than 15 minutes: forgotten
    for nonce in "bcd":
        assert cache.add(nonce)
    assert len(cache) == 3
    assert cache.add("a")  # the oldest entry made room


def test_request_stats_windows_on_an_explicit_clock() -> None:
    now = [10.2]
    stats = RequestStats(clock=lambda: now[0])
    for _ in range(3):
        stats.request_started()
        stats.request_finished()
    now[0] = 11.5
    stats.request_started()
    snapshot = stats.snapshot()
    assert (snapshot["requests_last_second"], snapshot["peak_rps"]) == (3, 3)
    assert (snapshot["in_flight"], snapshot["max_in_flight"]) == (1, 1)
    now[0] = 13.0  # a second passed with nothing in it
    assert stats.snapshot()["requests_last_second"] == 0


def test_store_asks_drop_only_for_pending_numbers() -> None:
    store = TaskStore(rng=random.Random(1))
    store.seed(["a", "b"])
    asked: list[bool] = []

    def never() -> bool:
        asked.append(True)
        return False

    assert store.acknowledge(["a", "a", "zzz"], drop=never) == 1
    assert store.acknowledge(["a", "b"], drop=never) == 1
    assert len(asked) == 2  # once for "a", once for "b": never for unknown or confirmed
    empty = TaskStore().poll(1, 10)
    assert (empty.total, empty.total_pages, empty.items) == (0, 0, [])
