"""The Domain API client: signs each attempt afresh, sends one POST, classifies the answer.

One :class:`DomainClient` (one aiohttp ``ClientSession``) per process, its connection pool
sized to the concurrency and kept alive. The client never retries: the pipeline decides what a
failure means for a batch. Every failure becomes an :class:`~worker.errors.ApiError` subclass;
cancellation passes through untouched.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import aiohttp
import orjson
import yarl

from worker.api import signing
from worker.clock import SYSTEM_CLOCK, Clock, iso_utc
from worker.errors import (
    ApiError,
    AuthError,
    CertificateError,
    ProtocolError,
    TransportError,
    clip,
    error_class_for,
)

API_VERSION = "2018-01-29"
_EXCERPT_BYTES = 160
_QUERY_RE = re.compile(r"\?[^\s'\"]*")


class CredentialsLike(Protocol):
    """What the client needs of a credentials object (see :mod:`worker.config.credentials`)."""

    @property
    def access_key_id(self) -> str: ...
    @property
    def access_key_secret(self) -> str: ...
    @property
    def security_token(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AckResult:
    """The answer to ``AcknowledgeTaskResult``: ``result`` numbers newly confirmed."""

    result: int
    request_id: str


class Acknowledger(Protocol):
    """The seam to the API (a :class:`DomainClient` in production)."""

    async def acknowledge(self, ids: Sequence[str]) -> AckResult: ...


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """One finished, unacknowledged task result from ``PollTaskResult``."""

    task_detail_no: str
    task_no: str | None = None
    domain_name: str | None = None
    task_status: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class PollPage:
    """One page of ``PollTaskResult``."""

    request_id: str
    page_num: int
    page_size: int
    total_items: int
    total_pages: int
    next_page: bool
    items: list[TaskDetail]


@runtime_checkable
class PollClient(Protocol):
    """The seam to ``PollTaskResult`` (a :class:`DomainClient` in production)."""

    async def poll_task_result(
        self,
        page_num: int,
        page_size: int,
        *,
        task_no: str | None = None,
        domain_name: str | None = None,
        task_result_status: int | None = None,
    ) -> PollPage: ...


@dataclass(frozen=True, slots=True)
class _Request:
    url: yarl.URL
    headers: dict[str, str]
    body: bytes


def _excerpt(raw: bytes) -> str:
    text = raw[:_EXCERPT_BYTES].decode("utf-8", "replace")
    return " ".join(text.split()) + ("..." if len(raw) > _EXCERPT_BYTES else "")


def _scrub_url(exc: BaseException) -> str:
    # aiohttp messages can quote the request URL, whose V1 query holds the signature.
    text = _QUERY_RE.sub("?...", str(exc)) or type(exc).__name__
    return clip(f"{type(exc).__name__}: {text}")


def _transport_error(exc: BaseException) -> TransportError:
    code = "Timeout" if isinstance(exc, TimeoutError) else "ConnectionError"
    return TransportError(code, _scrub_url(exc))


MAX_RETRY_AFTER_S = 300.0


def _retry_after_s(value: str | None) -> float | None:
    """``x-acs-retry-after`` (milliseconds) in seconds, clamped to [0, 300]: the hint pauses
    the whole fleet, so a garbled or absurd value must not stop it for hours."""
    try:
        seconds = float(value) / 1000.0 if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _decode(raw: bytes, status: int, retry_after: str | None) -> dict[str, Any]:
    """Parse a body and raise the right :class:`ApiError` for anything but success."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) and status in (401, 403):
        # A proxy's refusal page: the request is refused whatever it carries.
        raise AuthError(f"HTTP{status}", f"refused, body: {_excerpt(raw)!r}", http_status=status)
    if not isinstance(data, dict):
        raise ProtocolError(
            "InvalidResponse",
            f"HTTP {status}, body is not a JSON object: {_excerpt(raw)!r}",
            http_status=status,
            retry_after_s=_retry_after_s(retry_after),
        )
    code = data.get("Code")
    if status == 200 and not code:
        return data
    code_text = str(code) if code else f"HTTP{status}"
    cls = error_class_for(code_text, status)
    raise cls(
        code_text,
        _message(data),
        request_id=str(data.get("RequestId") or "") or None,
        http_status=status,
        retry_after_s=_retry_after_s(retry_after),
    )


_ECHO_RE = re.compile(r"(string ?to ?sign|canonical ?request)", re.IGNORECASE)


def _message(data: dict[str, Any]) -> str:
    """The error message, cut before any echo of what the server signed: for
    SignatureDoesNotMatch the service quotes its string to sign, which holds the STS token."""
    text = str(data.get("Message") or "")
    match = _ECHO_RE.search(text)
    if match:
        text = text[: match.start()].rstrip(" :,") + " (server's string to sign omitted)"
    return clip(text)


def _int_field(data: dict[str, Any], name: str, raw_excerpt: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(
            "InvalidResponse",
            f"{name} missing or not a non-negative integer: {raw_excerpt!r}",
            request_id=str(data.get("RequestId") or "") or None,
            http_status=200,
        )
    return value


class DomainClient:
    """Signed calls to the Domain API over one pooled aiohttp session.

    ``timeout_s`` bounds a whole request and ``connect_timeout_s`` its connection set-up
    (seconds). ``signature`` is ``"v3"`` (ACS3-HMAC-SHA256) or ``"v1"`` (HMAC-SHA1).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        credentials: CredentialsLike,
        signature: str = "v3",
        lang: str = "en",
        user_client_ip: str | None = None,
        timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        pool_size: int = 4,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._base = yarl.URL(endpoint.rstrip("/") + "/")
        host = self._base.host or ""
        # The signed host must be what aiohttp sends: the port only when it is not the default.
        self._host = host if self._base.is_default_port() else f"{host}:{self._base.port}"
        self._credentials = credentials
        self._sign = self._sign_v1 if signature == "v1" else self._sign_v3
        self._extra = [("Lang", lang)] + (
            [("UserClientIp", user_client_ip)] if user_client_ip else []
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._pool_size = pool_size
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, raise_for_status=False
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def set_credentials(self, credentials: CredentialsLike) -> None:
        """Use new credentials from the next attempt on (after an operator fixed them)."""
        self._credentials = credentials

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        """Confirm task-detail numbers; ``Result`` is how many the service newly confirmed."""
        params = [*self._extra, *signing.flatten_list("TaskDetailNo", ids)]
        data, raw = await self._call("AcknowledgeTaskResult", params)
        return AckResult(_int_field(data, "Result", raw), str(data.get("RequestId") or ""))

    async def poll_task_result(
        self,
        page_num: int,
        page_size: int,
        *,
        task_no: str | None = None,
        domain_name: str | None = None,
        task_result_status: int | None = None,
    ) -> PollPage:
        """One page of finished, unacknowledged task results (``page_size`` at most 1000)."""
        params = [*self._extra, ("PageNum", str(page_num)), ("PageSize", str(page_size))]
        optional = (("TaskNo", task_no), ("DomainName", domain_name))
        params += [(k, v) for k, v in optional if v]
        if task_result_status is not None:
            params.append(("TaskResultStatus", str(task_result_status)))
        data, raw = await self._call("PollTaskResult", params)
        return _poll_page(data, raw)

    async def _call(self, action: str, params: list[tuple[str, str]]) -> tuple[dict[str, Any], str]:
        if self._session is None:
            raise RuntimeError("DomainClient used outside 'async with'")
        request = self._sign(action, params)
        try:
            async with self._session.post(
                request.url, data=request.body, headers=request.headers
            ) as response:
                raw = await response.read()
                status, retry_after = response.status, response.headers.get("x-acs-retry-after")
        except aiohttp.ClientConnectorCertificateError as exc:
            # Retrying cannot fix a certificate; hold the items like refused credentials.
            raise CertificateError("CertificateVerifyFailed", _scrub_url(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc) from None
        return _decode(raw, status, retry_after), _excerpt(raw)

    def _common(self) -> tuple[str, str]:
        return iso_utc(self._clock.now()), uuid.uuid4().hex

    def _sign_v3(self, action: str, params: list[tuple[str, str]]) -> _Request:
        creds = self._credentials
        date, nonce = self._common()
        body = signing.form_body(params)
        hashed = hashlib.sha256(body).hexdigest()
        headers = {
            "host": self._host,
            "content-type": signing.FORM_CONTENT_TYPE,
            "x-acs-action": action,
            "x-acs-content-sha256": hashed,
            "x-acs-date": date,
            "x-acs-signature-nonce": nonce,
            "x-acs-version": API_VERSION,
        }
        if creds.security_token:
            headers["x-acs-security-token"] = creds.security_token
        canonical = signing.v3_canonical("POST", "/", (), headers, hashed)
        signature = signing.v3_signature(creds.access_key_secret, canonical)
        headers["Authorization"] = signing.v3_authorization(
            creds.access_key_id, canonical.signed_headers, signature
        )
        headers["Accept"] = "application/json"
        return _Request(self._base, headers, body)

    def _sign_v1(self, action: str, params: list[tuple[str, str]]) -> _Request:
        creds = self._credentials
        date, nonce = self._common()
        common = [
            ("AccessKeyId", creds.access_key_id),
            ("Action", action),
            ("Format", "JSON"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", nonce),
            ("SignatureVersion", "1.0"),
            ("Timestamp", date),
            ("Version", API_VERSION),
        ]
        if creds.security_token:
            common.append(("SecurityToken", creds.security_token))
        # The common parameters travel in the query, the business ones in the form body;
        # V1 signs both merged.
        string_to_sign = signing.v1_string_to_sign("POST", [*common, *params])
        signature = signing.v1_signature(creds.access_key_secret, string_to_sign)
        query = signing.canonical_query([*common, ("Signature", signature)])
        url = yarl.URL(f"{self._base}?{query}", encoded=True)
        headers = {"content-type": signing.FORM_CONTENT_TYPE, "Accept": "application/json"}
        return _Request(url, headers, signing.form_body(params))


def _poll_page(data: dict[str, Any], raw: str) -> PollPage:
    details = (data.get("Data") or {}).get("TaskDetail") or []
    if not isinstance(details, list):
        raise ProtocolError("InvalidResponse", f"Data.TaskDetail is not a list: {raw!r}")
    items = [
        TaskDetail(
            task_detail_no=str(d.get("TaskDetailNo", "")),
            task_no=d.get("TaskNo"),
            domain_name=d.get("DomainName"),
            task_status=d.get("TaskStatus"),
            raw=d,
        )
        for d in details
        if isinstance(d, dict) and d.get("TaskDetailNo")
    ]
    return PollPage(
        request_id=str(data.get("RequestId") or ""),
        page_num=_int_field(data, "CurrentPageNum", raw),
        page_size=_int_field(data, "PageSize", raw),
        total_items=_int_field(data, "TotalItemNum", raw),
        total_pages=_int_field(data, "TotalPageNum", raw),
        next_page=bool(data.get("NextPage")),
        items=items,
    )


__all__ = ["AckResult", "ApiError", "DomainClient", "PollClient", "PollPage", "TaskDetail"]
