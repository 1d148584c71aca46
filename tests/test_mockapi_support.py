"""Helpers for the mock-api tests: requests signed with worker.api.signing, sent over real HTTP.

No tests here. The signing is deliberately independent of ``worker/api/client.py``: the
stand-in is the yardstick the client is measured against, so it is tested with the bare
signing primitives (and, in ``test_mockapi_sdk.py``, with the official SDKs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from worker.api.signing import (
    FORM_CONTENT_TYPE,
    canonical_query,
    flatten_list,
    form_body,
    v1_signature,
    v1_string_to_sign,
    v3_authorization,
    v3_canonical,
    v3_signature,
)
from worker.dev.mockapi.auth import API_VERSION, DEFAULT_CREDENTIALS, AcceptedKey

KEY = DEFAULT_CREDENTIALS
ACK = "AcknowledgeTaskResult"
POLL = "PollTaskResult"
Params = Sequence[tuple[str, str]]


def utc_timestamp(offset_s: float = 0.0) -> str:
    """``YYYY-MM-DDThh:mm:ssZ``, ``offset_s`` seconds from now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


def ids_params(ids: Sequence[str]) -> list[tuple[str, str]]:
    """``TaskDetailNo.N`` parameters for ``ids``."""
    return flatten_list("TaskDetailNo", ids)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A signed request ready to send; tests tamper with copies (``dataclasses.replace``)."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes

    def with_headers(self, **changes: str) -> Prepared:
        """A copy with headers set (names with ``_`` become ``-``)."""
        headers = {**self.headers, **{k.replace("_", "-"): v for k, v in changes.items()}}
        return dataclasses.replace(self, headers=headers)


def _url(endpoint: str, query: Params) -> URL:
    # canonical_query's encoding is valid on the wire; encoded=True stops yarl re-encoding.
    return URL(f"http://{endpoint}/?{canonical_query(query)}", encoded=True)


def v3_request(
    endpoint: str,
    action: str,
    query: Params = (),
    *,
    form: Params | None = None,
    key: AcceptedKey = KEY,
    method: str = "POST",
    nonce: str | None = None,
    date: str | None = None,
    version: str = API_VERSION,
    extra_headers: Mapping[str, str] | None = None,
) -> Prepared:
    """A V3 (ACS3-HMAC-SHA256) request; ``form`` goes in the body as the signed payload."""
    body = form_body(form) if form is not None else b""
    headers = {
        "host": endpoint,
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": date or utc_timestamp(),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    if form is not None:
        headers["content-type"] = FORM_CONTENT_TYPE
    if key.security_token is not None:
        headers["x-acs-security-token"] = key.security_token
    headers.update(extra_headers or {})
    canonical = v3_canonical(method, "/", query, headers, headers["x-acs-content-sha256"])
    signature = v3_signature(key.access_key_secret, canonical)
    headers["Authorization"] = v3_authorization(
        key.access_key_id, canonical.signed_headers, signature
    )
    return Prepared(method, _url(endpoint, query), headers, body)


def v1_params(
    action: str,
    params: Params = (),
    *,
    method: str = "POST",
    key: AcceptedKey = KEY,
    nonce: str | None = None,
    timestamp: str | None = None,
    version: str = API_VERSION,
) -> list[tuple[str, str]]:
    """Every V1 parameter, ``Signature`` last."""
    signed = [
        ("AccessKeyId", key.access_key_id),
        ("Action", action),
        ("Format", "JSON"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", nonce or str(uuid.uuid4())),
        ("SignatureVersion", "1.0"),
        ("Timestamp", timestamp or utc_timestamp()),
        ("Version", version),
        *params,
    ]
    if key.security_token is not None:
        signed.append(("SecurityToken", key.security_token))
    signature = v1_signature(key.access_key_secret, v1_string_to_sign(method, signed))
    return [*signed, ("Signature", signature)]


def v1_request(
    endpoint: str,
    action: str,
    params: Params = (),
    *,
    method: str = "POST",
    in_body: bool = False,
    **options: Any,
) -> Prepared:
    """A V1 (HMAC-SHA1) request: parameters in the query, or with ``in_body`` in a form."""
    signed = v1_params(action, params, method=method, **options)
    if in_body:
        headers = {"content-type": FORM_CONTENT_TYPE}
        return Prepared(method, _url(endpoint, ()), headers, form_body(signed))
    return Prepared(method, _url(endpoint, signed), {}, b"")


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object."""
        data = orjson.loads(self.body)
        assert isinstance(data, dict)
        return data

    @property
    def code(self) -> str | None:
        """The error ``Code``, or ``None`` on success."""
        code = self.json().get("Code")
        return code if isinstance(code, str) else None


async def send(session: aiohttp.ClientSession, request: Prepared) -> Reply:
    """Send ``request`` and read the whole answer."""
    async with session.request(
        request.method, request.url, headers=request.headers, data=request.body or None
    ) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def admin(
    session: aiohttp.ClientSession, base_url: str, path: str, payload: object = None
) -> Reply:
    """GET an admin route, or POST ``payload`` as JSON to it."""
    url = f"{base_url}/_admin/{path}"
    if payload is None:
        async with session.get(url) as response:
            return Reply(response.status, dict(response.headers), await response.read())
    async with session.post(url, data=orjson.dumps(payload)) as response:
        return Reply(response.status, dict(response.headers), await response.read())
