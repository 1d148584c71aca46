"""What the stand-in answers: request ids, JSON bodies and the service's error shape.

Every API error travels as an :class:`ApiFailure` up to the handler, which turns it into
the documented body ``{"RequestId", "HostId", "Code", "Message", "Recommend"}`` with a fresh
upper-case request id, as the real gateway does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import orjson
from aiohttp import web

JSON_CONTENT_TYPE = "application/json"
RETRY_AFTER_HEADER = "x-acs-retry-after"
_RECOMMEND = "https://api.aliyun.com/troubleshoot?q={code}&product=Domain&requestId={rid}"


def new_request_id() -> str:
    """A fresh request id shaped like the service's: an upper-case UUID4."""
    return str(uuid.uuid4()).upper()


class ApiFailure(Exception):
    """An error answer: HTTP status, service code, message and extra response headers."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def missing_parameter(name: str) -> ApiFailure:
    """``MissingParameter`` naming the parameter (or header) that was not supplied."""
    return ApiFailure(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied.",
    )


def invalid_parameter(name: str, why: str) -> ApiFailure:
    """``InvalidParameter`` naming the parameter and what is wrong with it."""
    return ApiFailure(400, "InvalidParameter", f'The parameter "{name}" is invalid: {why}')


def json_response(payload: object, *, status: int = 200) -> web.Response:
    """Serialise with orjson (the hot path answers >1000 times a second)."""
    return raw_json_response(orjson.dumps(payload), status=status)


def raw_json_response(body: bytes, *, status: int = 200) -> web.Response:
    """An already serialised JSON body, with the service's content type."""
    return web.Response(body=body, status=status, content_type=JSON_CONTENT_TYPE, charset="utf-8")


def error_response(failure: ApiFailure, host: str) -> web.Response:
    """The documented error body for ``failure``; ``host`` becomes ``HostId``."""
    rid = new_request_id()
    body = {
        "RequestId": rid,
        "HostId": host,
        "Code": failure.code,
        "Message": failure.message,
        "Recommend": _RECOMMEND.format(code=failure.code, rid=rid),
    }
    response = json_response(body, status=failure.status)
    response.headers.update(failure.headers)
    return response
