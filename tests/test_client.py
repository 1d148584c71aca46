"""The Domain API client against the stand-in over real HTTP: every answer class."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import free_port
from worker.api.client import DomainClient
from worker.config.credentials import Credentials
from worker.dev.mockapi.auth import AcceptedKey as MockKey
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.errors import (
    ApiError,
    AuthError,
    ClockSkewError,
    PermanentApiError,
    ProtocolError,
    ServerError,
    ThrottledError,
    TransportError,
)

pytestmark = pytest.mark.anyio

SECRET = "client-test-SECRET-9f8e"
TOKEN = "client-test-STS-TOKEN-77"
GOOD = Credentials("LTAItestkey01", SECRET)
IDS = [f"{i:032x}" for i in range(1, 8)]


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    keys = [MockKey(GOOD.access_key_id, SECRET), MockKey("STSkey0001", SECRET, TOKEN)]
    async with serve_mock_api(keys=keys, fault_seed=1) as server:
        server.state.seed(IDS, task_no="T-1", domain="example.com")
        yield server


def client_for(
    api: MockApi, *, signature: str = "v3", creds: Credentials = GOOD, timeout_s: float = 5.0
) -> DomainClient:
    return DomainClient(
        endpoint=api.url,
        credentials=creds,
        signature=signature,
        timeout_s=timeout_s,
        connect_timeout_s=min(timeout_s, 2.0),
    )


def assert_no_secret(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), *map(str, exc.args)):
        assert SECRET not in text
        assert TOKEN not in text


@pytest.mark.parametrize("signature", ["v3", "v1"])
async def test_full_and_partial_results(api: MockApi, signature: str) -> None:
    async with client_for(api, signature=signature) as client:
        full = await client.acknowledge(IDS[:3])
        again = await client.acknowledge([*IDS[2:5], IDS[3], "f" * 32])
    assert full.result == 3
    assert full.request_id
    # IDS[2] was confirmed already, IDS[3] appears twice, "fff..." is unknown: 2 new ones.
    assert again.result == 2
    assert api.state.confirmed_more_than_once() == [IDS[2]]


@pytest.mark.parametrize("signature", ["v3", "v1"])
async def test_sts_token_is_sent_and_required(api: MockApi, signature: str) -> None:
    with_token = Credentials("STSkey0001", SECRET, TOKEN)
    async with client_for(api, signature=signature, creds=with_token) as client:
        assert (await client.acknowledge(IDS[:1])).result == 1
    without = Credentials("STSkey0001", SECRET)
    async with client_for(api, signature=signature, creds=without) as client:
        with pytest.raises(AuthError) as caught:
            await client.acknowledge(IDS[1:2])
    assert_no_secret(caught.value)


async def test_poll_task_result_pages(api: MockApi) -> None:
    async with client_for(api) as client:
        page = await client.poll_task_result(1, 5, task_no="T-1")
        assert page.total_items == len(IDS)
        assert page.next_page
        assert [i.task_detail_no for i in page.items] == IDS[:5]
        assert page.items[0].domain_name == "example.com"
        await client.acknowledge(IDS[:5])
        after = await client.poll_task_result(1, 5)
    assert [i.task_detail_no for i in after.items] == IDS[5:]


@pytest.mark.parametrize(
    ("creds", "code"),
    [
        (Credentials(GOOD.access_key_id, "wrong-" + SECRET), "SignatureDoesNotMatch"),
        (Credentials("LTAIunknown99", SECRET), "InvalidAccessKeyId.NotFound"),
    ],
)
@pytest.mark.parametrize("signature", ["v3", "v1"])
async def test_bad_credentials_are_fatal(
    api: MockApi, creds: Credentials, code: str, signature: str
) -> None:
    async with client_for(api, creds=creds, signature=signature) as client:
        with pytest.raises(AuthError) as caught:
            await client.acknowledge(IDS[:1])
    assert caught.value.code == code
    assert caught.value.fatal
    assert caught.value.request_id
    assert_no_secret(caught.value)


async def test_sts_token_echoed_by_a_signature_mismatch_is_not_kept(api: MockApi) -> None:
    # For V1 the service quotes its string to sign, SecurityToken included, in the message.
    wrong = Credentials("STSkey0001", "wrong-" + SECRET, TOKEN)
    async with client_for(api, signature="v1", creds=wrong) as client:
        with pytest.raises(AuthError) as caught:
            await client.acknowledge(IDS[:1])
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "string to sign omitted" in caught.value.message
    assert_no_secret(caught.value)


async def test_clock_skew_is_fatal(api: MockApi) -> None:
    api.faults.update({"clock_offset_s": 20 * 60})
    async with client_for(api) as client:
        with pytest.raises(ClockSkewError) as caught:
            await client.acknowledge(IDS[:1])
    assert caught.value.code.startswith("InvalidTimeStamp")


async def test_empty_list_is_permanent(api: MockApi) -> None:
    async with client_for(api) as client:
        with pytest.raises(PermanentApiError) as caught:
            await client.acknowledge([])
    assert caught.value.code == "MissingTaskDetailNo"
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("fault", "cls", "code"),
    [
        ({"throttle_rate": 1.0, "retry_after_ms": 1500}, ThrottledError, "Throttling.User"),
        ({"error_rate": 1.0}, ServerError, None),
        ({"html_rate": 1.0}, ProtocolError, "InvalidResponse"),
        ({"truncated_rate": 1.0}, ProtocolError, "InvalidResponse"),
        ({"reset_rate": 1.0}, TransportError, "ConnectionError"),
    ],
)
async def test_faults_map_to_retryable_errors(
    api: MockApi, fault: dict[str, object], cls: type[ApiError], code: str | None
) -> None:
    api.faults.update(fault)
    async with client_for(api) as client:
        with pytest.raises(cls) as caught:
            await client.acknowledge(IDS[:2])
    exc = caught.value
    assert exc.retryable
    if code is not None:
        assert exc.code == code
    if "retry_after_ms" in fault:
        assert exc.retry_after_s == pytest.approx(1.5)
    if isinstance(exc, ProtocolError):
        assert "body is not a JSON object" in exc.message or "Result" in exc.message
    assert_no_secret(exc)


async def test_quota_answers_throttling(api: MockApi) -> None:
    api.faults.update({"quota_rps": 1})
    async with client_for(api) as client:
        await client.acknowledge(IDS[:1])
        # The bucket holds one second's worth: the second call within it is over quota.
        with pytest.raises(ThrottledError):
            await client.acknowledge(IDS[1:2])


async def test_hang_times_out(api: MockApi) -> None:
    api.faults.update({"hang_rate": 1.0, "hang_s": 30})
    async with client_for(api, timeout_s=0.3) as client:
        with pytest.raises(TransportError) as caught:
            await client.acknowledge(IDS[:1])
    assert caught.value.code == "Timeout"


async def test_refused_connection_is_a_transport_error() -> None:
    client = DomainClient(endpoint=f"http://127.0.0.1:{free_port()}", credentials=GOOD)
    async with client:
        with pytest.raises(TransportError) as caught:
            await client.acknowledge(IDS[:1])
    assert caught.value.code == "ConnectionError"


@pytest.mark.parametrize("signature", ["v3", "v1"])
async def test_every_attempt_is_signed_afresh(api: MockApi, signature: str) -> None:
    # The stand-in rejects a reused nonce, so twenty calls prove twenty fresh signatures.
    async with client_for(api, signature=signature) as client:
        for _ in range(20):
            await client.acknowledge(IDS[:1])
    assert api.stats()["errors_by_code"] == {}
