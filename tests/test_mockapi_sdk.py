"""The official SDKs call the stand-in as they would call the Domain API.

``alibabacloud_domain20180129`` (on tea-openapi) signs V3 ``ACS3-HMAC-SHA256`` and also
signs ``accept`` and ``user-agent``; ``aliyunsdkcore`` signs V1 HMAC-SHA1. Their calls are
synchronous, so they run in a worker thread while the stand-in serves on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest

# The SDKs ship without type information; these imports are untyped on purpose.
from alibabacloud_domain20180129 import models as domain_models  # type: ignore[import-untyped]
from alibabacloud_domain20180129.client import Client  # type: ignore[import-untyped]
from alibabacloud_tea_openapi import models as openapi_models  # type: ignore[import-untyped]
from alibabacloud_tea_openapi.exceptions import (  # type: ignore[import-untyped]
    ClientException,
    ThrottlingException,
)
from aliyunsdkcore.acs_exception.exceptions import ServerException  # type: ignore[import-untyped]
from aliyunsdkcore.auth.credentials import StsTokenCredential  # type: ignore[import-untyped]
from aliyunsdkcore.client import AcsClient  # type: ignore[import-untyped]
from aliyunsdkcore.request import CommonRequest, RpcRequest  # type: ignore[import-untyped]
from darabonba.core import DaraCore  # type: ignore[import-untyped]

from worker.dev.mockapi.auth import AcceptedKey
from worker.dev.mockapi.server import MockApi, serve_mock_api

pytestmark = pytest.mark.anyio
KEY = AcceptedKey("LTAIsdktest", "sdk-secret")
STS = AcceptedKey("STS.sdktest", "sts-secret", "sts-token-1")
IDS = [f"{n:032x}" for n in range(100, 110)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(keys=[KEY, STS]) as server:
        server.state.seed(IDS, task_no="T-SDK", domain="example.com")
        yield server
    close_tea_sessions(server.endpoint)


def close_tea_sessions(endpoint: str) -> None:
    """Close the keep-alive connections tea-openapi pooled for ``endpoint``.

    Its core keeps one ``requests.Session`` per host:port in a class-level dict for the
    life of the process; left there, their sockets outlive the stand-in and surface as
    ``ResourceWarning`` (an error under our warning filter) whenever GC finds them.
    """
    sessions = DaraCore._sessions
    for key in [k for k in sessions if f"//{endpoint}:" in k]:
        sessions.pop(key).close()


# --- tea-openapi, V3 ------------------------------------------------------------------------


def tea_client(api: MockApi, key: AcceptedKey = KEY) -> Any:
    config = openapi_models.Config(
        access_key_id=key.access_key_id,
        access_key_secret=key.access_key_secret,
        security_token=key.security_token,
        endpoint=api.endpoint,
        protocol="http",
        connect_timeout=5000,
        read_timeout=10000,
    )
    return Client(config)


def tea_acknowledge(api: MockApi, ids: list[str], key: AcceptedKey = KEY) -> Any:
    request = domain_models.AcknowledgeTaskResultRequest(task_detail_no=ids, lang="en")
    return tea_client(api, key).acknowledge_task_result(request).body.to_map()


def tea_poll(api: MockApi, page_num: int, page_size: int) -> Any:
    request = domain_models.PollTaskResultRequest(
        page_num=page_num, page_size=page_size, task_no="T-SDK"
    )
    return tea_client(api).poll_task_result(request).body.to_map()


async def test_tea_v3_acknowledge_and_poll(api: MockApi) -> None:
    first = await anyio.to_thread.run_sync(tea_poll, api, 1, 4)
    assert (first["TotalItemNum"], first["TotalPageNum"], first["NextPage"]) == (10, 3, True)
    numbers = [d["TaskDetailNo"] for d in first["Data"]["TaskDetail"]]
    assert numbers == IDS[:4]
    answer = await anyio.to_thread.run_sync(tea_acknowledge, api, [*numbers, numbers[0]])
    assert answer["Result"] == 4
    after = await anyio.to_thread.run_sync(tea_poll, api, 1, 4)
    assert after["TotalItemNum"] == 6
    assert [d["TaskDetailNo"] for d in after["Data"]["TaskDetail"]] == IDS[4:8]


async def test_tea_v3_with_sts_token(api: MockApi) -> None:
    answer = await anyio.to_thread.run_sync(tea_acknowledge, api, IDS[:2], STS)
    assert answer["Result"] == 2
    stolen = AcceptedKey(STS.access_key_id, STS.access_key_secret, "not-the-token")
    with pytest.raises(ClientException) as caught:
        await anyio.to_thread.run_sync(tea_acknowledge, api, IDS[2:3], stolen)
    assert caught.value.code == "InvalidSecurityToken.MismatchWithAccessKey"


async def test_tea_reads_our_errors(api: MockApi) -> None:
    wrong = AcceptedKey(KEY.access_key_id, "wrong-secret")
    with pytest.raises(ClientException) as caught:
        await anyio.to_thread.run_sync(tea_acknowledge, api, IDS[:1], wrong)
    assert (caught.value.code, caught.value.status_code) == ("SignatureDoesNotMatch", 400)
    api.faults.update({"throttle_rate": 1.0, "retry_after_ms": 1500})
    with pytest.raises(ThrottlingException) as throttled:
        await anyio.to_thread.run_sync(tea_acknowledge, api, IDS[:1])
    assert (throttled.value.code, throttled.value.retry_after) == ("Throttling.User", 1500)
    assert api.state.pending_count == len(IDS)


# --- aliyunsdkcore, V1 ----------------------------------------------------------------------


def core_request(api: MockApi, ids: list[str], *, method: str, in_body: bool) -> Any:
    request = CommonRequest()
    request.set_domain(api.endpoint)
    request.set_protocol_type("http")
    request.set_version("2018-01-29")
    request.set_action_name("AcknowledgeTaskResult")
    request.set_method(method)
    request.set_accept_format("JSON")
    add = request.add_body_params if in_body else request.add_query_param
    for n, number in enumerate(ids, start=1):
        add(f"TaskDetailNo.{n}", number)
    add("Lang", "en")
    return request


def core_acknowledge(
    api: MockApi,
    ids: list[str],
    *,
    key: AcceptedKey = KEY,
    method: str = "POST",
    in_body: bool = False,
) -> bytes:
    if key.security_token is not None:
        credential = StsTokenCredential(
            key.access_key_id, key.access_key_secret, key.security_token
        )
        client = AcsClient(region_id="cn-hangzhou", credential=credential, auto_retry=False)
    else:
        client = AcsClient(
            key.access_key_id, key.access_key_secret, "cn-hangzhou", auto_retry=False
        )
    body: bytes = core_call(client, core_request(api, ids, method=method, in_body=in_body))
    return body


def core_call(client: Any, request: Any) -> Any:
    """Call, then close the client's connection pool.

    AcsClient closes it only in ``__del__``; when an exception's traceback keeps the
    client alive, its keep-alive socket would outlive the stand-in (a ResourceWarning).
    """
    try:
        return client.do_action_with_exception(request)
    finally:
        client.session.close()


@pytest.mark.parametrize(("method", "in_body"), [("POST", False), ("GET", False), ("POST", True)])
async def test_aliyunsdkcore_v1_acknowledge(api: MockApi, method: str, in_body: bool) -> None:
    call = partial(
        core_acknowledge, api, [IDS[0], IDS[1], "f" * 32], method=method, in_body=in_body
    )
    body = await anyio.to_thread.run_sync(call)
    assert b'"Result":2' in body
    assert api.state.confirmed_ids() == IDS[:2]


async def test_aliyunsdkcore_v1_with_sts_token(api: MockApi) -> None:
    body = await anyio.to_thread.run_sync(partial(core_acknowledge, api, IDS[:3], key=STS))
    assert b'"Result":3' in body


async def test_aliyunsdkcore_recognises_a_wrong_secret(api: MockApi) -> None:
    """The SDK compares our "server string to sign" with its own, as with the real service.

    Only a product-style ``RpcRequest`` keeps the string it signed (``CommonRequest``
    signs an inner request), so this one is built the way generated product SDKs do.
    """

    def call() -> None:
        request = RpcRequest("Domain", "2018-01-29", "AcknowledgeTaskResult")
        request.set_endpoint(api.endpoint)
        request.set_protocol_type("http")
        request.set_accept_format("JSON")
        request.add_query_param("TaskDetailNo.1", IDS[0])
        client = AcsClient(KEY.access_key_id, "wrong-secret", "cn-hangzhou", auto_retry=False)
        core_call(client, request)

    with pytest.raises(ServerException) as caught:
        await anyio.to_thread.run_sync(call)
    assert caught.value.get_error_code() == "InvalidAccessKeySecret"
    assert caught.value.get_http_status() == 400
