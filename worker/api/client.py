"""The Domain API client: signs each attempt afresh, sends one POST, classifies the answer.

One :class:`DomainClient` (one aiohttp ``ClientSession``) per process, its connection pool
sized to the concurrency and kept alive. The client never retries: the pipeline decides what a
failure means for a batch. Every failure becomes an :class:`~worker.errors.ApiError` subclass;
cancellation passes through untouched.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import aiohttp
import yarl

from worker.api import signing
from worker.api.answers import (
    AckResult,
    PollPage,
    TaskDetail,
    decode,
    excerpt,
    int_field,
    poll_page,
)
from worker.clock import SYSTEM_CLOCK, Clock, iso_utc
from worker.errors import (
    ApiError,
    CertificateError,
    TransportError,
    clip,
)

API_VERSION = "2018-01-29"
_QUERY_RE = re.compile(r"\?[^\s'\"]*")


class CredentialsLike(Protocol):
    """What the client needs of a credentials object (see :mod:`worker.config.credentials`)."""

    @property
    def access_key_id(self) -> str: ...
    @property
    def access_key_secret(self) -> str: ...
    @property
    def security_token(self) -> str | None: ...


class Acknowledger(Protocol):
    """The seam to the API (a :class:`DomainClient` in production)."""

    async def acknowledge(self, ids: Sequence[str]) -> AckResult: ...


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


def _scrub_url(exc: BaseException) -> str:
    # aiohttp messages can quote the request URL, whose V1 query holds the signature.
    text = _QUERY_RE.sub("?...", str(exc)) or type(exc).__name__
    return clip(f"{type(exc).__name__}: {text}")


def _transport_error(exc: BaseException) -> TransportError:
    code = "Timeout" if isinstance(exc, TimeoutError) else "ConnectionError"
    return TransportError(code, _scrub_url(exc))


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
        return AckResult(int_field(data, "Result", raw), str(data.get("RequestId") or ""))

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
        return poll_page(data, raw)

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
        return decode(raw, status, retry_after), excerpt(raw)

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


__all__ = ["AckResult", "ApiError", "DomainClient", "PollClient", "PollPage", "TaskDetail"]
