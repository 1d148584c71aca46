"""Request authentication as the Domain API does it, built on :mod:`worker.api.signing`.

Both signatures are checked with the same primitives the client signs with:

- V3 (``Authorization: ACS3-HMAC-SHA256 ...``): the canonical request is rebuilt from the
  method, the raw path, the decoded query and the signed headers *as received*, with
  ``x-acs-content-sha256`` checked against the body.
- V1 (``Signature`` parameter, HMAC-SHA1): the query merged with a form body, minus
  ``Signature``, signed with the method used on the wire.

Checks run cheapest and least revealing first (version, key, token, headers, time), the
signature next, and the nonce last, so that only an authentic request can use up a nonce.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from multidict import CIMultiDictProxy

from worker.api.signing import (
    V3Canonical,
    parse_v3_authorization,
    percent_encode,
    signatures_equal,
    v1_signature,
    v1_string_to_sign,
    v3_canonical,
    v3_signature,
)
from worker.dev.mockapi.nonces import NonceCache
from worker.dev.mockapi.replies import ApiFailure, invalid_parameter, missing_parameter

API_VERSION = "2018-01-29"
MAX_CLOCK_SKEW_S = 900.0
"""A request timestamp may be at most 15 minutes away from the stand-in's clock."""

V1_REQUIRED = (
    "AccessKeyId",
    "Action",
    "Format",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureVersion",
    "Timestamp",
    "Version",
    "Signature",
)
_TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_MISMATCH = "Specified signature is not matched with our calculation."


@dataclass(frozen=True, slots=True)
class AcceptedKey:
    """A key the stand-in accepts; with ``security_token`` it behaves as an STS key."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


DEFAULT_CREDENTIALS = AcceptedKey("testid", "testsecret")


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of an HTTP request that authentication reads."""

    method: str
    raw_path: str
    query: list[tuple[str, str]]
    """Query parameters decoded from the raw query string, in wire order."""
    headers: CIMultiDictProxy[str]
    body: bytes
    params: dict[str, str]
    """The query merged with a form body: what V1 signs and what the actions read."""

    @property
    def is_v3(self) -> bool:
        """True when the request carries a V3 ``Authorization`` header."""
        return "Authorization" in self.headers

    @property
    def action(self) -> str | None:
        """The API action: the ``x-acs-action`` header for V3, the ``Action`` param for V1."""
        return self.headers.get("x-acs-action") if self.is_v3 else self.params.get("Action")


class Authenticator:
    """Authenticates API requests against the accepted keys.

    ``clock`` is the stand-in's wall clock in Unix seconds (it may run ahead, to simulate
    skew). Keys can be replaced at run time; security tokens of replaced keys are then
    answered as expired, as after an STS rotation.
    """

    def __init__(
        self,
        keys: Iterable[AcceptedKey] = (DEFAULT_CREDENTIALS,),
        *,
        clock: Callable[[], float] = time.time,
        nonces: NonceCache | None = None,
    ) -> None:
        self._keys = {k.access_key_id: k for k in keys}
        self._retired_tokens: collections.deque[str] = collections.deque(maxlen=32)
        self._clock = clock
        self._nonces = nonces or NonceCache()

    def replace_keys(self, keys: Iterable[AcceptedKey]) -> None:
        """Accept only ``keys`` from now on."""
        new = {k.access_key_id: k for k in keys}
        kept = {k.security_token for k in new.values()}
        for old in self._keys.values():
            if old.security_token is not None and old.security_token not in kept:
                self._retired_tokens.append(old.security_token)
        self._keys = new

    def key_ids(self) -> list[str]:
        """The accepted AccessKeyIds (never the secrets)."""
        return list(self._keys)

    def verify(self, request: SignedRequest) -> str:
        """Authenticate ``request``; returns its AccessKeyId or raises :class:`ApiFailure`."""
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            return self._verify_v3(request, authorization)
        return self._verify_v1(request)

    # --- V3 -----------------------------------------------------------------------------

    def _verify_v3(self, request: SignedRequest, authorization: str) -> str:
        auth = parse_v3_authorization(authorization)
        if auth is None:
            raise _incomplete("the Authorization header is not ACS3-HMAC-SHA256")
        headers = request.headers
        _check_version(headers.get("x-acs-version"), "x-acs-version")
        if not headers.get("x-acs-action"):
            raise missing_parameter("x-acs-action")
        key = self._key(auth.access_key_id)
        self._check_token(key, headers.get("x-acs-security-token"))
        signed = _check_signed_headers(headers, auth.signed_headers)
        self._check_time(headers.get("x-acs-date"), "x-acs-date")
        payload_hash = _check_payload_hash(headers, request.body)
        canonical = _canonical_as_received(request, signed, payload_hash)
        expected = v3_signature(key.access_key_secret, canonical)
        if not signatures_equal(expected, auth.signature):
            detail = f"server canonical request is:{canonical.canonical_request}"
            raise _mismatch(_redact(detail, key.security_token))
        self._check_nonce(headers.get("x-acs-signature-nonce"), "x-acs-signature-nonce")
        return key.access_key_id

    # --- V1 -----------------------------------------------------------------------------

    def _verify_v1(self, request: SignedRequest) -> str:
        params = request.params
        for name in V1_REQUIRED:
            if not params.get(name):
                raise missing_parameter(name)
        _check_version(params["Version"], "Version")
        _check_v1_constants(params)
        key = self._key(params["AccessKeyId"])
        self._check_token(key, params.get("SecurityToken"))
        self._check_time(params["Timestamp"], "Timestamp")
        signed = ((k, v) for k, v in params.items() if k != "Signature")
        string_to_sign = v1_string_to_sign(request.method, signed)
        expected = v1_signature(key.access_key_secret, string_to_sign)
        if not signatures_equal(expected, params["Signature"]):
            detail = f"server string to sign is:{string_to_sign}"
            raise _mismatch(_redact(detail, key.security_token))
        self._check_nonce(params["SignatureNonce"], "SignatureNonce")
        return key.access_key_id

    # --- shared checks ------------------------------------------------------------------

    def _key(self, access_key_id: str) -> AcceptedKey:
        key = self._keys.get(access_key_id)
        if key is None:
            raise ApiFailure(
                404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."
            )
        return key

    def _check_token(self, key: AcceptedKey, token: str | None) -> None:
        # Only an STS key needs a token; one sent with a permanent key is ignored.
        if key.security_token is None or (
            token is not None and signatures_equal(token, key.security_token)
        ):
            return
        if token is not None and token in self._retired_tokens:
            raise ApiFailure(
                400, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired."
            )
        raise ApiFailure(
            400,
            "InvalidSecurityToken.MismatchWithAccessKey",
            "Specified SecurityToken is missing or does not belong to the AccessKey.",
        )

    def _check_time(self, value: str | None, name: str) -> None:
        if not value:
            raise missing_parameter(name)
        sent_s = _parse_timestamp(value, name)
        if abs(self._clock() - sent_s) > MAX_CLOCK_SKEW_S:
            raise ApiFailure(
                400,
                "InvalidTimeStamp.Expired",
                f"Specified time stamp or date value is expired. {name}={value}",
            )

    def _check_nonce(self, nonce: str | None, name: str) -> None:
        if not nonce:
            raise missing_parameter(name)
        if not self._nonces.add(nonce):
            raise ApiFailure(
                400, "SignatureNonceUsed", "Specified signature nonce was used already."
            )


def _check_version(version: str | None, name: str) -> None:
    if not version:
        raise missing_parameter(name)
    if version != API_VERSION:
        raise ApiFailure(400, "InvalidVersion", f"Specified parameter {name} is not valid.")


def _check_v1_constants(params: dict[str, str]) -> None:
    if params["SignatureMethod"] != "HMAC-SHA1":
        raise invalid_parameter("SignatureMethod", "only HMAC-SHA1 is supported")
    if params["SignatureVersion"] != "1.0":
        raise invalid_parameter("SignatureVersion", "only 1.0 is supported")
    if params["Format"].upper() != "JSON":
        # The service would answer XML; the stand-in speaks only JSON, and a client that
        # forgets Format=JSON is a bug worth surfacing (the Domain API defaults to XML).
        raise invalid_parameter("Format", "the stand-in answers only Format=JSON")


def _parse_timestamp(value: str, name: str) -> float:
    try:
        if _TIMESTAMP_RE.fullmatch(value) is None:
            raise ValueError(value)
        parsed = dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.UTC)
    except ValueError:
        raise ApiFailure(
            400,
            "InvalidTimeStamp.Format",
            f"Specified time stamp or date value is not well formatted: {name}={value}",
        ) from None
    return parsed.timestamp()


def _check_signed_headers(headers: CIMultiDictProxy[str], signed: tuple[str, ...]) -> list[str]:
    """Normalise the SignedHeaders list and check it covers what the service requires."""
    names = sorted({name.lower() for name in signed})
    signed_set = set(names)
    for name in names:
        if name not in headers:
            raise _incomplete(f"signed header {name} is not in the request")
    required = {"host"} | {k.lower() for k in headers if k.lower().startswith("x-acs-")}
    unsigned = sorted(required - signed_set)
    if unsigned:
        raise _incomplete(f"header {unsigned[0]} must be signed")
    return names


def _check_payload_hash(headers: CIMultiDictProxy[str], body: bytes) -> str:
    claimed = headers.get("x-acs-content-sha256")
    if not claimed:
        raise _incomplete("header x-acs-content-sha256 is required")
    actual = hashlib.sha256(body).hexdigest()
    if not signatures_equal(claimed.lower(), actual):
        raise _mismatch("x-acs-content-sha256 does not match the body")
    return claimed


def _canonical_as_received(
    request: SignedRequest, signed: list[str], payload_hash: str
) -> V3Canonical:
    """The V3 canonical request over exactly the headers the client listed as signed."""
    values = {name: _header_value(request.headers, name) for name in signed}
    return v3_canonical(
        request.method, request.raw_path, request.query, values, payload_hash, signed
    )


def _header_value(headers: CIMultiDictProxy[str], name: str) -> str:
    values = headers.getall(name)
    if len(values) == 1:
        return values[0].strip()
    return ",".join(sorted(v.strip() for v in values))  # how the SDK signs repeated headers


def _incomplete(why: str) -> ApiFailure:
    return ApiFailure(
        400, "IncompleteSignature", f"The request signature does not conform to standards: {why}"
    )


def _redact(text: str, token: str | None) -> str:
    """Hide the STS token (raw, encoded once or twice) from a message a client may log.

    The service echoes it in its string to sign; the stand-in is run by people who paste
    its answers into tickets, so it does not.
    """
    if not token:
        return text
    once = percent_encode(token)
    for form in (percent_encode(once), once, token):
        text = text.replace(form, "<security-token>")
    return text


def _mismatch(detail: str) -> ApiFailure:
    return ApiFailure(400, "SignatureDoesNotMatch", f"{_MISMATCH} {detail}")
