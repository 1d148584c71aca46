"""Each API error code maps to the class that says what to do with it."""

from __future__ import annotations

import pytest

from worker.errors import (
    AuthError,
    ClockSkewError,
    EndpointError,
    NonceUsedError,
    PermanentApiError,
    ServerError,
    ThrottledError,
    error_class_for,
)


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("Throttling", 400, ThrottledError),
        ("Throttling.User", 400, ThrottledError),
        ("Throttling.Api", 503, ThrottledError),
        ("ServiceUnavailable", 503, ServerError),
        ("InternalError", 500, ServerError),
        ("UnknownError", 400, ServerError),
        ("SomethingNew", 502, ServerError),
        ("SignatureNonceUsed", 400, NonceUsedError),
        ("InvalidTimeStamp.Expired", 400, ClockSkewError),
        ("InvalidAccessKeyId.NotFound", 404, AuthError),
        ("InvalidAccessKeyId.Inactive", 400, AuthError),
        ("SignatureDoesNotMatch", 400, AuthError),
        ("Forbidden", 403, AuthError),
        ("Forbidden.RAM", 403, AuthError),
        ("MissingTaskDetailNo", 400, PermanentApiError),
        ("InvalidParameter", 400, PermanentApiError),
        ("HTTP429", 429, ThrottledError),
        ("NoPermission", 403, AuthError),
        ("HTTP401", 401, AuthError),
        ("InvalidAction.NotFound", 404, EndpointError),
        ("InvalidVersion", 400, EndpointError),
    ],
)
def test_mapping(code: str, status: int, cls: type) -> None:
    assert error_class_for(code, status) is cls


def test_flags_on_the_classes() -> None:
    assert ThrottledError("Throttling").retryable
    assert not ThrottledError("Throttling").fatal
    assert AuthError("Forbidden").fatal
    assert not AuthError("Forbidden").retryable
    assert not PermanentApiError("InvalidParameter").retryable
    assert not PermanentApiError("InvalidParameter").fatal


def test_str_and_summary() -> None:
    exc = ServerError("InternalError", "boom", request_id="R1", http_status=500)
    assert str(exc) == "InternalError (HTTP 500): boom [request R1]"
    assert exc.summary() == "InternalError: boom"
    assert len(ServerError("X", "y" * 1000).summary()) == 300
