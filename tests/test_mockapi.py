"""The stand-in authenticates and answers like the Domain API, over real loopback HTTP."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from tests.test_mockapi_support import (
    ACK,
    POLL,
    Prepared,
    Reply,
    admin,
    ids_params,
    send,
    utc_timestamp,
    v1_request,
    v3_request,
)
from worker.dev.mockapi.app import parse_pairs
from worker.dev.mockapi.auth import AcceptedKey
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.dev.mockapi.state import FAILED, SUCCEEDED

pytestmark = pytest.mark.anyio
IDS = [f"{n:032x}" for n in range(1, 6)]
UNKNOWN = "f" * 32
SIGNERS = ["v3", "v1"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=7) as server:
        server.state.seed(IDS, task_no="T-1", domain="example.com")
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def signed(api: MockApi, signer: str, action: str, params: list[tuple[str, str]]) -> Prepared:
    """A request signed the ``signer`` way, parameters in the query."""
    if signer == "v3":
        return v3_request(api.endpoint, action, params)
    return v1_request(api.endpoint, action, params)


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert (reply.status, reply.code) == (status, code), reply.body[:300]


# --- both signatures are accepted ----------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_v3_with_query_parameters(
    api: MockApi, session: aiohttp.ClientSession, method: str
) -> None:
    reply = await send(session, v3_request(api.endpoint, ACK, ids_params(IDS[:2]), method=method))
    assert reply.status == 200
    assert reply.json()["Result"] == 2
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_v3_with_form_body(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v3_request(api.endpoint, ACK, [("Lang", "en")], form=ids_params(IDS))
    reply = await send(session, request)
    assert reply.json()["Result"] == 5


@pytest.mark.parametrize(("method", "in_body"), [("GET", False), ("POST", False), ("POST", True)])
async def test_v1(api: MockApi, session: aiohttp.ClientSession, method: str, in_body: bool) -> None:
    params = [*ids_params(IDS[:3]), ("Lang", "zh"), ("UserClientIp", "10.0.0.1")]
    request = v1_request(api.endpoint, ACK, params, method=method, in_body=in_body)
    reply = await send(session, request)
    assert reply.status == 200, reply.body
    assert reply.json()["Result"] == 3


async def test_v3_signed_extra_headers_are_verified(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    """The official SDK also signs accept and user-agent; what is signed must match."""
    request = v3_request(api.endpoint, ACK, ids_params(IDS[:1]))
    # v3_canonical signs only host/content-type/x-acs-*, so add a signed header by hand.
    auth = request.headers["Authorization"].replace("SignedHeaders=", "SignedHeaders=accept;")
    reply = await send(session, request.with_headers(accept="*/*", Authorization=auth))
    assert_error(reply, 400, "SignatureDoesNotMatch")  # the signature did not cover accept
    assert "server canonical request is:POST\n/\n" in reply.json()["Message"]


# --- authentication failures ---------------------------------------------------------------


async def test_tampered_query_parameter(api: MockApi, session: aiohttp.ClientSession) -> None:
    for signer in SIGNERS:
        request = signed(api, signer, ACK, ids_params(IDS[:1]))
        tampered = URL(str(request.url).replace(IDS[0], IDS[1]), encoded=True)
        reply = await send(session, dataclasses.replace(request, url=tampered))
        assert_error(reply, 400, "SignatureDoesNotMatch")
    assert api.state.pending_count == len(IDS)


async def test_tampered_body(api: MockApi, session: aiohttp.ClientSession) -> None:
    v3 = v3_request(api.endpoint, ACK, form=ids_params(IDS[:1]))
    v1 = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), in_body=True)
    for request in (v3, v1):
        tampered = dataclasses.replace(
            request, body=request.body.replace(IDS[0].encode(), b"0" * 32)
        )
        assert_error(await send(session, tampered), 400, "SignatureDoesNotMatch")


async def test_tampered_signed_header(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v3_request(api.endpoint, ACK, ids_params(IDS[:1]))
    tampered = request.with_headers(x_acs_date=utc_timestamp(1))
    assert_error(await send(session, tampered), 400, "SignatureDoesNotMatch")


async def test_x_acs_header_must_be_signed(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v3_request(api.endpoint, ACK, ids_params(IDS[:1])).with_headers(x_acs_extra="1")
    reply = await send(session, request)
    assert_error(reply, 400, "IncompleteSignature")
    assert "x-acs-extra" in reply.json()["Message"]


@pytest.mark.parametrize("signer", SIGNERS)
async def test_unknown_key(api: MockApi, session: aiohttp.ClientSession, signer: str) -> None:
    stranger = AcceptedKey("nobody", "testsecret")
    if signer == "v3":
        request = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), key=stranger)
    else:
        request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), key=stranger)
    assert_error(await send(session, request), 404, "InvalidAccessKeyId.NotFound")


async def test_wrong_secret(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), key=AcceptedKey("testid", "x"))
    reply = await send(session, request)
    assert_error(reply, 400, "SignatureDoesNotMatch")
    # The V1 message carries the server's string to sign after the first ':' (the SDK reads it).
    assert reply.json()["Message"].split(":")[1].startswith("POST&%2F&AccessKeyId%3Dtestid")


async def test_reused_nonce(api: MockApi, session: aiohttp.ClientSession) -> None:
    v3_first = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), nonce="n-1")
    v3_again = v3_request(api.endpoint, ACK, ids_params(IDS[1:2]), nonce="n-1")
    v1_first = v1_request(api.endpoint, ACK, ids_params(IDS[2:3]), nonce="n-2")
    v1_again = v1_request(api.endpoint, ACK, ids_params(IDS[3:4]), nonce="n-2")
    for first, again in ((v3_first, v3_again), (v1_first, v1_again)):
        assert (await send(session, first)).status == 200
        assert_error(await send(session, again), 400, "SignatureNonceUsed")
    assert api.state.pending_ids() == [IDS[1], IDS[3], IDS[4]]


async def test_rejected_request_does_not_use_up_its_nonce(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    bad = v3_request(
        api.endpoint, ACK, ids_params(IDS[:1]), nonce="n-3", key=AcceptedKey("testid", "x")
    )
    assert_error(await send(session, bad), 400, "SignatureDoesNotMatch")
    good = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), nonce="n-3")
    assert (await send(session, good)).status == 200


@pytest.mark.parametrize("offset_s", [-16 * 60, 16 * 60])
async def test_timestamp_16_minutes_off(
    api: MockApi, session: aiohttp.ClientSession, offset_s: int
) -> None:
    v3 = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), date=utc_timestamp(offset_s))
    v1 = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), timestamp=utc_timestamp(offset_s))
    for request in (v3, v1):
        assert_error(await send(session, request), 400, "InvalidTimeStamp.Expired")
    inside = v3_request(
        api.endpoint, ACK, ids_params(IDS[:1]), date=utc_timestamp(offset_s * 14 / 16)
    )
    assert (await send(session, inside)).status == 200


async def test_clock_offset_makes_fresh_requests_expire(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    api.faults.update({"clock_offset_s": 20 * 60})
    reply = await send(session, v3_request(api.endpoint, ACK, ids_params(IDS[:1])))
    assert_error(reply, 400, "InvalidTimeStamp.Expired")
    late = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), date=utc_timestamp(20 * 60))
    assert (await send(session, late)).status == 200


async def test_malformed_timestamp(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), timestamp="2024-01-01 00:00:00")
    assert_error(await send(session, request), 400, "InvalidTimeStamp.Format")


@pytest.mark.parametrize("signer", SIGNERS)
async def test_wrong_version(api: MockApi, session: aiohttp.ClientSession, signer: str) -> None:
    if signer == "v3":
        request = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), version="2014-05-26")
    else:
        request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), version="2014-05-26")
    assert_error(await send(session, request), 400, "InvalidVersion")


async def test_missing_version(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), version="")
    reply = await send(session, request)
    assert_error(reply, 400, "MissingParameter")
    assert '"Version"' in reply.json()["Message"]


async def test_v1_only_json(api: MockApi, session: aiohttp.ClientSession) -> None:
    request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]))
    xml = URL(str(request.url).replace("Format=JSON", "Format=XML"), encoded=True)
    reply = await send(session, dataclasses.replace(request, url=xml))
    assert_error(reply, 400, "InvalidParameter")
    assert "Format" in reply.json()["Message"]


@pytest.mark.parametrize("signer", SIGNERS)
async def test_sts_token_required(session: aiohttp.ClientSession, signer: str) -> None:
    sts = AcceptedKey("STS.key", "sts-secret", "token-1")
    bare = AcceptedKey("STS.key", "sts-secret")
    wrong = AcceptedKey("STS.key", "sts-secret", "token-x")
    rotated = AcceptedKey("STS.key", "sts-secret-2", "token-2")

    async with serve_mock_api(keys=sts) as api:
        api.state.seed(IDS)

        def request(key: AcceptedKey, number: str) -> Prepared:
            params = ids_params([number])
            if signer == "v3":
                return v3_request(api.endpoint, ACK, params, key=key)
            return v1_request(api.endpoint, ACK, params, key=key)

        assert (await send(session, request(sts, IDS[0]))).json()["Result"] == 1
        for key in (bare, wrong):
            reply = await send(session, request(key, IDS[1]))
            assert_error(reply, 400, "InvalidSecurityToken.MismatchWithAccessKey")
        api.verifier.replace_keys([rotated])
        reply = await send(session, request(sts, IDS[1]))
        assert_error(reply, 400, "InvalidSecurityToken.Expired")
        assert (await send(session, request(rotated, IDS[1]))).json()["Result"] == 1


async def test_error_body_shape(api: MockApi, session: aiohttp.ClientSession) -> None:
    reply = await send(session, v3_request(api.endpoint, "DeleteEverything"))
    assert_error(reply, 404, "InvalidAction.NotFound")
    body = reply.json()
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert re.fullmatch(
        r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", body["RequestId"]
    )
    assert body["HostId"] == api.endpoint
    second = await send(session, v3_request(api.endpoint, "DeleteEverything"))
    assert second.json()["RequestId"] != body["RequestId"]


async def test_missing_action(api: MockApi, session: aiohttp.ClientSession) -> None:
    async with session.get(api.url + "/") as response:
        assert response.status == 400
        assert (await response.json())["Code"] == "MissingParameter"


# --- AcknowledgeTaskResult -----------------------------------------------------------------


@pytest.mark.parametrize("signer", SIGNERS)
async def test_result_counts_unique_newly_confirmed(
    api: MockApi, session: aiohttp.ClientSession, signer: str
) -> None:
    first = [IDS[0], IDS[0], IDS[1], UNKNOWN]
    assert (await send(session, signed(api, signer, ACK, ids_params(first)))).json()["Result"] == 2
    again = [IDS[1], IDS[2]]
    assert (await send(session, signed(api, signer, ACK, ids_params(again)))).json()["Result"] == 1
    assert api.state.confirmation_count(IDS[0]) == 1
    assert api.state.confirmation_count(IDS[1]) == 2
    assert api.state.confirmation_count(UNKNOWN) == 0
    stats = api.stats()
    assert stats["confirmed"] == 3
    assert stats["reconfirm_attempts"] == 1
    assert stats["confirmed_more_than_once"] == 1
    assert stats["confirmed_more_than_once_ids"] == [IDS[1]]
    assert stats["batch_sizes"] == {"2": 1, "4": 1}


async def test_ids_in_index_order(api: MockApi, session: aiohttp.ClientSession) -> None:
    params = [("TaskDetailNo.10", IDS[4]), ("TaskDetailNo.2", IDS[1]), ("TaskDetailNo.1", IDS[0])]
    assert (await send(session, signed(api, "v1", ACK, params))).json()["Result"] == 3
    assert api.state.confirmed_ids() == [IDS[0], IDS[1], IDS[4]]


@pytest.mark.parametrize("signer", SIGNERS)
async def test_missing_task_detail_no(
    api: MockApi, session: aiohttp.ClientSession, signer: str
) -> None:
    reply = await send(session, signed(api, signer, ACK, [("Lang", "en")]))
    assert_error(reply, 400, "MissingTaskDetailNo")


# --- PollTaskResult ------------------------------------------------------------------------


async def poll(
    api: MockApi, session: aiohttp.ClientSession, *params: tuple[str, str]
) -> dict[str, object]:
    reply = await send(session, signed(api, "v3", POLL, list(params)))
    assert reply.status == 200, reply.body
    return reply.json()


async def test_poll_pages_in_insertion_order(api: MockApi, session: aiohttp.ClientSession) -> None:
    extra = api.state.seed_random(20)
    page = await poll(api, session, ("PageNum", "2"), ("PageSize", "10"))
    assert page["TotalItemNum"] == 25
    assert (page["CurrentPageNum"], page["PageSize"], page["TotalPageNum"]) == (2, 10, 3)
    assert (page["PrePage"], page["NextPage"]) == (True, True)
    details = page["Data"]["TaskDetail"]  # type: ignore[index]
    assert [d["TaskDetailNo"] for d in details] == extra[5:15]
    assert set(details[0]) == {
        "TaskDetailNo", "TaskNo", "DomainName", "InstanceId", "TaskType", "TaskTypeDescription",
        "TaskStatus", "TaskStatusCode", "TaskResult", "ErrorMsg", "TryCount", "CreateTime",
        "UpdateTime",
    }  # fmt: skip
    last = await poll(api, session, ("PageNum", "3"), ("PageSize", "10"))
    assert (last["PrePage"], last["NextPage"]) == (True, False)
    assert len(last["Data"]["TaskDetail"]) == 5  # type: ignore[index]


async def test_poll_filters(api: MockApi, session: aiohttp.ClientSession) -> None:
    api.state.seed(["a" * 32], task_no="T-2", domain="other.org", status=FAILED)
    api.state.seed(["b" * 32], task_no="T-2", domain="example.com", status=SUCCEEDED)
    base = (("PageNum", "1"), ("PageSize", "100"))

    async def numbers(*filters: tuple[str, str]) -> list[str]:
        page = await poll(api, session, *base, *filters)
        return [d["TaskDetailNo"] for d in page["Data"]["TaskDetail"]]  # type: ignore[index]

    assert await numbers(("TaskNo", "T-2")) == ["a" * 32, "b" * 32]
    assert await numbers(("DomainName", "other.org")) == ["a" * 32]
    assert await numbers(("TaskNo", "T-2"), ("TaskResultStatus", "2")) == ["b" * 32]
    failed = await poll(api, session, *base, ("TaskNo", "T-2"), ("TaskResultStatus", "3"))
    detail = failed["Data"]["TaskDetail"][0]  # type: ignore[index]
    assert (detail["TaskStatus"], detail["TaskStatusCode"]) == ("EXECUTE_FAILURE", 3)


async def test_acknowledged_results_disappear(api: MockApi, session: aiohttp.ClientSession) -> None:
    await send(session, signed(api, "v1", ACK, ids_params(IDS[:3])))
    page = await poll(api, session, ("PageNum", "1"), ("PageSize", "10"))
    assert page["TotalItemNum"] == 2
    assert [d["TaskDetailNo"] for d in page["Data"]["TaskDetail"]] == IDS[3:]  # type: ignore[index]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ([("PageSize", "10")], "MissingParameter"),
        ([("PageNum", "1")], "MissingParameter"),
        ([("PageNum", "0"), ("PageSize", "10")], "InvalidParameter"),
        ([("PageNum", "1"), ("PageSize", "0")], "InvalidParameter"),
        ([("PageNum", "1"), ("PageSize", "1001")], "InvalidParameter"),
        ([("PageNum", "x"), ("PageSize", "10")], "InvalidParameter"),
    ],
)
async def test_poll_paging_is_validated(
    api: MockApi, session: aiohttp.ClientSession, params: list[tuple[str, str]], code: str
) -> None:
    assert_error(await send(session, signed(api, "v3", POLL, params)), 400, code)


# --- admin -------------------------------------------------------------------------------------


async def test_admin_seed(api: MockApi, session: aiohttp.ClientSession) -> None:
    reply = await admin(session, api.url, "seed", {"ids": ["c" * 32, IDS[0]], "task_no": "T-9"})
    assert reply.json()["ids"] == ["c" * 32]  # IDS[0] was already there
    generated = (await admin(session, api.url, "seed", {"count": 3})).json()["ids"]
    assert len(generated) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in generated)
    pending = (await admin(session, api.url, "pending?limit=2")).json()
    assert pending == {"ids": IDS[:2], "count": 9}


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("seed", {"ids": "abc"}, "ids"),
        ("seed", {"ids": [1]}, "ids"),
        ("seed", {"count": -1}, "count"),
        ("seed", {"count": True}, "count"),
        ("seed", {"ids": [], "status": 4}, "status"),
        ("seed", [1, 2], "body"),
        ("faults", {"throttle_rate": 1.5}, "throttle_rate"),
        ("faults", {"latency_ms": -1}, "latency_ms"),
        ("faults", {"reset_rate": "0.5"}, "reset_rate"),
        ("faults", {"error_rate": True}, "error_rate"),
        ("faults", {"hang_s": 0}, "hang_s"),
        ("faults", {"retry_after_ms": 1.5}, "retry_after_ms"),
        ("faults", {"no_such_fault": 1}, "no_such_fault"),
        ("keys", {"access_key_id": "x"}, "access_key_secret"),
        ("keys", {"keys": []}, "keys"),
        (
            "keys",
            {"access_key_id": "x", "access_key_secret": "y", "security_token": 3},
            "security_token",
        ),
    ],
)
async def test_admin_rejects_bad_input(
    api: MockApi, session: aiohttp.ClientSession, path: str, payload: object, field: str
) -> None:
    before = api.faults.as_dict()
    reply = await admin(session, api.url, path, payload)
    assert reply.status == 400
    assert reply.json()["field"] == field
    assert api.faults.as_dict() == before


async def test_admin_rejects_bad_json_and_limit(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    async with session.post(api.url + "/_admin/faults", data=b"{nope") as response:
        assert response.status == 400
        assert (await response.json())["field"] == "body"
    reply = await admin(session, api.url, "pending?limit=abc")
    assert (reply.status, reply.json()["field"]) == (400, "limit")


async def test_admin_faults_partial_update(api: MockApi, session: aiohttp.ClientSession) -> None:
    reply = await admin(session, api.url, "faults", {"throttle_rate": 0.25, "retry_after_ms": 150})
    assert reply.json()["throttle_rate"] == 0.25
    assert reply.json()["retry_after_ms"] == 150
    current = (await admin(session, api.url, "faults")).json()
    assert current == api.faults.as_dict()
    assert current["error_rate"] == 0.0


async def test_admin_keys_replace_accepted_keys(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    new = {"access_key_id": "rotated", "access_key_secret": "s3cr3t-value"}
    reply = await admin(session, api.url, "keys", new)
    assert reply.json() == {"access_key_ids": ["rotated"]}
    assert b"s3cr3t-value" not in reply.body
    old = await send(session, v3_request(api.endpoint, ACK, ids_params(IDS[:1])))
    assert_error(old, 404, "InvalidAccessKeyId.NotFound")
    key = AcceptedKey("rotated", "s3cr3t-value")
    fresh = await send(session, v3_request(api.endpoint, ACK, ids_params(IDS[:1]), key=key))
    assert fresh.json()["Result"] == 1


async def test_admin_stats_confirmed_and_reset(
    api: MockApi, session: aiohttp.ClientSession
) -> None:
    await send(session, signed(api, "v3", ACK, ids_params(IDS[:2])))
    await send(session, signed(api, "v3", "Nope", []))
    stats = (await admin(session, api.url, "stats")).json()
    assert stats["requests_total"] == 2
    assert stats["requests_by_action"] == {ACK: 1, "(unknown)": 1}
    assert stats["errors_by_code"] == {"InvalidAction.NotFound": 1}
    assert (stats["confirmed"], stats["pending"], stats["dropped_confirmations"]) == (2, 3, 0)
    assert (stats["in_flight"], stats["max_in_flight"]) == (0, 1)
    for key in ("requests_last_second", "peak_rps", "uptime_s", "faults_injected"):
        assert key in stats
    confirmed = (await admin(session, api.url, "confirmed")).json()
    assert confirmed == {"ids": IDS[:2], "count": 2}
    assert (await admin(session, api.url, "reset-stats", {})).status == 200
    after = (await admin(session, api.url, "stats")).json()
    assert (after["requests_total"], after["errors_by_code"], after["batch_sizes"]) == (0, {}, {})
    assert after["confirmed"] == 2  # tasks are state, not statistics


# --- parsing ---------------------------------------------------------------------------------


@given(st.text(alphabet="ab=&%+2Fe4中 ", max_size=40))
def test_parse_pairs_agrees_with_parse_qsl(text: str) -> None:
    """The hot-path parser decodes exactly as the standard library does, errors included."""
    try:
        expected: object = parse_qsl(text, keep_blank_values=True, errors="strict")
    except ValueError as exc:
        expected = type(exc)
    try:
        got: object = parse_pairs(text)
    except ValueError as exc:
        got = type(exc)
    assert got == expected


@pytest.mark.parametrize("signer", SIGNERS)
async def test_mismatch_message_hides_the_security_token(
    session: aiohttp.ClientSession, signer: str
) -> None:
    token = "TOKEN-abc/with+odd=chars"
    wrong = AcceptedKey("STS.key", "not-the-secret", token)
    async with serve_mock_api(keys=AcceptedKey("STS.key", "sts-secret", token)) as api:
        if signer == "v3":
            request = v3_request(api.endpoint, ACK, ids_params(IDS[:1]), key=wrong)
        else:
            request = v1_request(api.endpoint, ACK, ids_params(IDS[:1]), key=wrong)
        reply = await send(session, request)
    assert_error(reply, 400, "SignatureDoesNotMatch")
    message = reply.json()["Message"]
    assert "<security-token>" in message
    assert "TOKEN-abc" not in message
