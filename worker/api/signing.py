"""Request signing for Alibaba Cloud RPC APIs: ACS3-HMAC-SHA256 (V3) and HMAC-SHA1 (V1).

Pure functions, no I/O, so the stand-in verifies with exactly the code the client signs with.
Signing is on the hot path (once per attempt, 100 ids per request), so percent-encoding
takes a fast path for the unreserved strings that task-detail numbers are, and V1 never
re-encodes the whole canonical string byte by byte: an already encoded string only
holds unreserved characters and ``%``, so encoding it again is three ``str.replace`` calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

V3_ALGORITHM = "ACS3-HMAC-SHA256"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
_UNRESERVED_BYTES = frozenset(_UNRESERVED.encode())
_BYTE_TABLE = tuple(chr(b) if b in _UNRESERVED_BYTES else f"%{b:02X}" for b in range(256))
_is_unreserved = re.compile(r"[A-Za-z0-9\-_.~]*").fullmatch


def percent_encode(value: str) -> str:
    """Encode as the RPC signers do: UTF-8, unreserved kept, every other byte ``%XY``.

    Space becomes ``%20`` (never ``+``), ``*`` becomes ``%2A``, ``~`` stays literal.
    """
    if _is_unreserved(value):
        return value
    return "".join([_BYTE_TABLE[b] for b in value.encode("utf-8")])


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Encode names and values, sort by encoded name in byte order, join as ``k=v&k=v``."""
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    return "&".join([f"{k}={v}" for k, v in pairs])


def form_body(params: Iterable[tuple[str, str]]) -> bytes:
    """A form body in the same encoding the signature uses (order kept as given)."""
    return "&".join([f"{percent_encode(k)}={percent_encode(v)}" for k, v in params]).encode()


def flatten_list(name: str, values: Iterable[str]) -> list[tuple[str, str]]:
    """Flatten a repeat list the RPC way: ``Name.1``, ``Name.2``... numbered from 1."""
    return [(f"{name}.{n}", v) for n, v in enumerate(values, start=1)]


# --- V3: ACS3-HMAC-SHA256 -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class V3Canonical:
    """The parts of a V3 signature that tests and the stand-in compare."""

    canonical_request: str
    signed_headers: str

    @property
    def hashed_request(self) -> str:
        """Hex SHA-256 of the canonical request."""
        return hashlib.sha256(self.canonical_request.encode()).hexdigest()


def _is_signed_header(name: str) -> bool:
    return name in ("host", "content-type") or name.startswith("x-acs-")


def v3_canonical(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    hashed_payload: str,
    signed_names: Iterable[str] | None = None,
) -> V3Canonical:
    """Build the V3 canonical request from the request parts.

    By default only ``host``, ``content-type`` and ``x-acs-*`` of ``headers`` are signed (what
    our client sends). A verifier passes ``signed_names``, the lower-case names a request
    says it signed (the official SDK also signs ``accept`` and ``user-agent``); then
    ``headers`` must hold a value for each, keyed by lower-case name.
    """
    if signed_names is None:
        pairs = sorted(
            (k.lower(), v.strip()) for k, v in headers.items() if _is_signed_header(k.lower())
        )
    else:
        pairs = [(name, headers[name].strip()) for name in signed_names]
    canonical_headers = "".join([f"{k}:{v}\n" for k, v in pairs])
    signed_headers = ";".join([k for k, _ in pairs])
    canonical_request = "\n".join(
        (method, path, canonical_query(query), canonical_headers, signed_headers, hashed_payload)
    )
    return V3Canonical(canonical_request, signed_headers)


def v3_signature(access_key_secret: str, canonical: V3Canonical) -> str:
    """Hex HMAC-SHA256 over ``ACS3-HMAC-SHA256\\n<hashed canonical request>``."""
    string_to_sign = f"{V3_ALGORITHM}\n{canonical.hashed_request}"
    mac = hmac.new(access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256)
    return mac.hexdigest()


def v3_authorization(access_key_id: str, signed_headers: str, signature: str) -> str:
    """The ``Authorization`` header value."""
    return (
        f"{V3_ALGORITHM} Credential={access_key_id},"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )


_AUTH_RE = re.compile(
    r"ACS3-HMAC-SHA256 Credential=(?P<cred>[^,]*),SignedHeaders=(?P<signed>[^,]*),"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)


@dataclass(frozen=True, slots=True)
class V3Authorization:
    """A parsed ``Authorization`` header."""

    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_v3_authorization(value: str) -> V3Authorization | None:
    """Parse a V3 ``Authorization`` header; ``None`` when it is not one."""
    match = _AUTH_RE.match(value.strip())
    if match is None:
        return None
    signed = tuple(match["signed"].split(";")) if match["signed"] else ()
    return V3Authorization(match["cred"], signed, match["sig"])


# --- V1: HMAC-SHA1, SignatureVersion 1.0 ----------------------------------------------


def v1_string_to_sign(method: str, params: Iterable[tuple[str, str]]) -> str:
    """``METHOD&%2F&`` + percentEncode(canonical query); ``Signature`` must not be in params."""
    query = canonical_query(params)
    # The canonical query holds only unreserved characters, '%', '=' and '&'.
    encoded = query.replace("%", "%25").replace("=", "%3D").replace("&", "%26")
    return f"{method}&%2F&{encoded}"


def v1_signature(access_key_secret: str, string_to_sign: str) -> str:
    """Base64 HMAC-SHA1 keyed with ``secret + '&'``."""
    key = f"{access_key_secret}&".encode()
    return base64.b64encode(hmac.new(key, string_to_sign.encode(), hashlib.sha1).digest()).decode()


def signatures_equal(a: str, b: str) -> bool:
    """Constant-time comparison, so the stand-in does not leak how much of a signature matched."""
    return hmac.compare_digest(a.encode(), b.encode())
