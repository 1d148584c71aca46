"""Signing reproduces every official and computed vector of the shared API doc byte for byte."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from worker.api import signing
from worker.api.signing import (
    EMPTY_SHA256,
    canonical_query,
    flatten_list,
    parse_v3_authorization,
    percent_encode,
    v1_signature,
    v1_string_to_sign,
    v3_authorization,
    v3_canonical,
    v3_signature,
)

V3_HEADERS = {
    "x-acs-date": "2023-10-26T10:22:32Z",
    "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
    "x-acs-content-sha256": EMPTY_SHA256,
    "Accept": "application/json",  # not signed: only host, content-type and x-acs-*
}
IDS = ["2659c29493e94416b297a7691340ccc4", "15fee9d10d514bada66bd08c5723c583"]


def test_v3_official_vector() -> None:
    headers = {
        **V3_HEADERS,
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
    }
    query = [
        ("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"),
        ("RegionId", "cn-shanghai"),
    ]
    canonical = v3_canonical("POST", "/", query, headers, EMPTY_SHA256)
    assert canonical.signed_headers == (
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    )
    assert (
        canonical.hashed_request
        == "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    signature = v3_signature("YourAccessKeySecret", canonical)
    assert signature == "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"


def test_v3_domain_vector() -> None:
    headers = {
        **V3_HEADERS,
        "host": "domain.aliyuncs.com",
        "x-acs-action": "AcknowledgeTaskResult",
        "x-acs-version": "2018-01-29",
    }
    query = [("Lang", "en"), *flatten_list("TaskDetailNo", IDS)]
    canonical = v3_canonical("POST", "/", query, headers, EMPTY_SHA256)
    assert canonical.canonical_request.split("\n")[2] == (
        "Lang=en&TaskDetailNo.1=2659c29493e94416b297a7691340ccc4"
        "&TaskDetailNo.2=15fee9d10d514bada66bd08c5723c583"
    )
    signature = v3_signature("YourAccessKeySecret", canonical)
    assert signature == "e297159ed057a5fb7e8f2fc2296aba65bd92ac727570dfa5f9ef1368fc39a4fd"


def test_v3_authorization_round_trip() -> None:
    value = v3_authorization("testid", "host;x-acs-date", "ab" * 32)
    parsed = parse_v3_authorization(value)
    assert parsed is not None
    assert parsed.access_key_id == "testid"
    assert parsed.signed_headers == ("host", "x-acs-date")
    assert parsed.signature == "ab" * 32
    assert parse_v3_authorization("Bearer x") is None


V1_OFFICIAL = [
    ("AccessKeyId", "testid"),
    ("Action", "DescribeRegions"),
    ("Format", "XML"),
    ("SignatureMethod", "HMAC-SHA1"),
    ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
    ("SignatureVersion", "1.0"),
    ("Timestamp", "2016-02-23T12:46:24Z"),
    ("Version", "2014-05-26"),
]


def test_v1_official_vector() -> None:
    sts = v1_string_to_sign("GET", V1_OFFICIAL)
    assert sts == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
        "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
        "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z"
        "%26Version%3D2014-05-26"
    )
    assert v1_signature("testsecret", sts) == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_v1_domain_vectors() -> None:
    params = [
        ("AccessKeyId", "testid"),
        ("Action", "AcknowledgeTaskResult"),
        ("Format", "JSON"),
        ("Lang", "en"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("SignatureVersion", "1.0"),
        ("Timestamp", "2016-02-23T12:46:24Z"),
        ("Version", "2018-01-29"),
        *flatten_list("TaskDetailNo", IDS),
    ]
    post = v1_signature("testsecret", v1_string_to_sign("POST", params))
    get = v1_signature("testsecret", v1_string_to_sign("GET", params))
    assert post == "DS7t0HG0nbOsjUZymmgjVcchUFI="
    assert get == "RMLLFs8o/XDnErqU4c0j/2n1Jzk="


def test_encoding_check_vector() -> None:
    assert percent_encode("a b*c~d+e/f:中") == "a%20b%2Ac~d%2Be%2Ff%3A%E4%B8%AD"


def test_v1_sorts_in_byte_order() -> None:
    params = flatten_list("TaskDetailNo", [str(i) for i in range(1, 12)])
    keys = [pair.split("=")[0] for pair in canonical_query(params).split("&")]
    assert keys.index("TaskDetailNo.10") < keys.index("TaskDetailNo.2")


@given(st.text())
def test_percent_encode_matches_reference(value: str) -> None:
    # urllib with no extra safe characters implements exactly the RPC rule; it is the
    # slow reference we avoid on the hot path.
    assert percent_encode(value) == urllib.parse.quote(value, safe="", encoding="utf-8")


@given(st.lists(st.tuples(st.text(min_size=1), st.text())))
def test_v1_double_encoding_shortcut_is_exact(params: list[tuple[str, str]]) -> None:
    reference = "POST&%2F&" + urllib.parse.quote(canonical_query(params), safe="")
    assert v1_string_to_sign("POST", params) == reference


def test_signatures_equal() -> None:
    assert signing.signatures_equal("abc", "abc")
    assert not signing.signatures_equal("abc", "abd")
