"""The one exception tree of ackworker.

::

    AckworkerError
    ├── ConfigError                 a bad setting; the CLI exits 2 with one line
    └── ApiError                    an answer (or no answer) from the Domain API
        ├── RetryableApiError       try again later, re-signed
        │   ├── ThrottledError      Throttling*; slows the whole fleet
        │   ├── ServerError         5xx, ServiceUnavailable, InternalError, UnknownError
        │   ├── NonceUsedError      SignatureNonceUsed
        │   ├── TransportError      connection reset, refused, timed out
        │   ├── GatewayError        a 4xx without a Code: a proxy's or gateway's answer
        │   └── ProtocolError       a body that is not the documented JSON
        ├── FatalApiError           the process cannot send until an operator acts
        │   ├── AuthError           InvalidAccessKeyId*, SignatureDoesNotMatch, Forbidden*,
        │   │                       any other 401/403
        │   ├── ClockSkewError      InvalidTimeStamp*
        │   ├── EndpointError       InvalidAction*, InvalidVersion*: wrong endpoint or version
        │   └── CertificateError    the endpoint's TLS certificate failed verification
        └── PermanentApiError       other 4xx: this request will never succeed as sent

``endpoint_down`` tells "the endpoint is away" (transport errors, 5xx, a 4xx without a
``Code``, a non-JSON error page) from an answer of the service: the first pause the account's
sending fleet-wide (see :mod:`worker.store.limiter`) and never dead-letter anything.

Cancellation is never wrapped: anyio's cancellation exceptions pass through untouched.
Messages never contain secrets; callers build them from codes, ids and response excerpts.
"""

from __future__ import annotations

MESSAGE_LIMIT = 300
"""Characters of an error text kept where it reaches a log line, a dead letter or a reply."""


def clip(text: str) -> str:
    """``text`` cut to :data:`MESSAGE_LIMIT` characters."""
    return text[:MESSAGE_LIMIT]


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, clipped."""
    return clip(f"{type(exc).__name__}: {exc}")


class AckworkerError(Exception):
    """Root of every error ackworker raises on purpose."""


class ConfigError(AckworkerError):
    """A setting is missing or invalid. ``str()`` is the one line shown to the operator."""


class ApiError(AckworkerError):
    """An attempt to call the Domain API failed.

    ``retryable`` and ``fatal`` say what the caller should do; ``retry_after_s`` is the
    server's ``x-acs-retry-after`` hint converted to seconds, when it sent one.
    """

    retryable: bool = False
    fatal: bool = False

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        request_id: str | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.http_status = http_status
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        status = f" (HTTP {self.http_status})" if self.http_status is not None else ""
        rid = f" [request {self.request_id}]" if self.request_id else ""
        text = f": {self.message}" if self.message else ""
        return f"{self.code}{status}{text}{rid}"

    @property
    def endpoint_down(self) -> bool:
        """True when no answer of the service came back: the endpoint (or the way to it) is
        away, which says nothing about the items sent."""
        return False

    def summary(self) -> str:
        """Short ``code: message`` form for dead letters, capped at 300 characters."""
        text = f"{self.code}: {self.message}" if self.message else self.code
        return clip(text)


class RetryableApiError(ApiError):
    """Transient: the same request may succeed on a later, re-signed attempt."""

    retryable = True


class ThrottledError(RetryableApiError):
    """The account's flow control refused the request (``Throttling*``)."""


class ServerError(RetryableApiError):
    """The service failed internally (5xx, ``ServiceUnavailable``, ``InternalError``...)."""

    @property
    def endpoint_down(self) -> bool:
        """A 5xx or a ``ServiceUnavailable`` is the service being away, not the items."""
        return True


class NonceUsedError(RetryableApiError):
    """``SignatureNonceUsed``: a fresh nonce on the next attempt fixes it."""


class TransportError(RetryableApiError):
    """No usable HTTP answer: connection refused or reset, or the request timed out."""

    @property
    def endpoint_down(self) -> bool:
        """No answer at all."""
        return True


class GatewayError(RetryableApiError):
    """A 4xx whose body has no ``Code``: a gateway's "no route", a proxy, a wrong path. The
    service never saw the request, so it says nothing about the items (never split them)."""

    @property
    def endpoint_down(self) -> bool:
        """Not the service's answer."""
        return True


class ProtocolError(RetryableApiError):
    """The answer was not the documented JSON (an HTML page, truncated JSON, no ``Result``)."""

    @property
    def endpoint_down(self) -> bool:
        """An error page instead of the service's JSON (a proxy's, a load balancer's); a
        mangled 200 is the service answering, badly."""
        return self.http_status != 200


class FatalApiError(ApiError):
    """Sending cannot work until an operator fixes credentials, permissions or the clock.

    ``event`` is the log event the send gate reports it with.
    """

    fatal = True
    event = "api.auth_failed"


class AuthError(FatalApiError):
    """Credentials were refused or lack permission."""


class ClockSkewError(FatalApiError):
    """The request timestamp was refused: this host's clock is off by more than 15 minutes."""

    event = "api.clock_skew"


class EndpointError(FatalApiError):
    """The service does not know the action or version: the endpoint setting is wrong."""

    event = "api.endpoint_refused"


class CertificateError(FatalApiError):
    """The endpoint's TLS certificate failed verification (a proxy, or a missing CA)."""

    event = "api.tls_failed"


class PermanentApiError(ApiError):
    """The service rejected this request as sent (``InvalidParameter`` and other 4xx)."""


_PREFIX_CLASSES: tuple[tuple[str, type[ApiError]], ...] = (
    ("Throttling", ThrottledError),
    ("InvalidAccessKeyId", AuthError),
    ("Forbidden", AuthError),
    ("InvalidTimeStamp", ClockSkewError),
    ("InvalidAction", EndpointError),
    ("InvalidVersion", EndpointError),
    ("InvalidApi", EndpointError),
)
_EXACT_CLASSES: dict[str, type[ApiError]] = {
    "SignatureDoesNotMatch": AuthError,
    "IncompleteSignature": AuthError,
    "InvalidSecurityToken.Expired": AuthError,
    "InvalidSecurityToken.Malformed": AuthError,
    "InvalidSecurityToken.MismatchWithAccessKey": AuthError,
    "SignatureNonceUsed": NonceUsedError,
    "ServiceUnavailable": ServerError,
    "InternalError": ServerError,
    "UnknownError": ServerError,
}


def error_class_for(code: str, http_status: int) -> type[ApiError]:
    """Map an API error code and HTTP status to the class that says how to handle it.

    Codes decide first (the service answers throttling with HTTP 400), then the status.
    """
    exact = _EXACT_CLASSES.get(code)
    if exact is not None:
        return exact
    for prefix, cls in _PREFIX_CLASSES:
        if code.startswith(prefix):
            return cls
    if http_status >= 500:
        return ServerError
    if http_status == 429:
        return ThrottledError
    if http_status in (401, 403):
        # Refused whoever sends it: not the items' fault, so never split and dead-letter.
        return AuthError
    return PermanentApiError
