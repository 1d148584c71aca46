"""What the Domain API's answers mean: a JSON body becomes a result, or the right
:class:`~worker.errors.ApiError` with its code, message, request id and retry-after hint.

Pure functions on bytes, no I/O. Odd answers are expected: a proxy's HTML page, a garbled
retry-after header, a message that quotes what the server signed (with the STS token).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.errors import (
    AuthError,
    GatewayError,
    PermanentApiError,
    ProtocolError,
    clip,
    error_class_for,
)

_EXCERPT_BYTES = 160


@dataclass(frozen=True, slots=True)
class AckResult:
    """The answer to ``AcknowledgeTaskResult``: ``result`` numbers newly confirmed."""

    result: int
    request_id: str


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


def excerpt(raw: bytes) -> str:
    """The start of a body as one line of text, for error messages."""
    text = raw[:_EXCERPT_BYTES].decode("utf-8", "replace")
    return " ".join(text.split()) + ("..." if len(raw) > _EXCERPT_BYTES else "")


MAX_RETRY_AFTER_S = 300.0


def retry_after_s(value: str | None) -> float | None:
    """``x-acs-retry-after`` (milliseconds) in seconds, clamped to [0, 300]: the hint pauses
    the whole fleet, so a garbled or absurd value must not stop it for hours."""
    try:
        seconds = float(value) / 1000.0 if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def decode(raw: bytes, status: int, retry_after: str | None) -> dict[str, Any]:
    """Parse a body and raise the right :class:`ApiError` for anything but success."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) and status in (401, 403):
        # A proxy's refusal page: the request is refused whatever it carries.
        raise AuthError(f"HTTP{status}", f"refused, body: {excerpt(raw)!r}", http_status=status)
    if not isinstance(data, dict):
        raise ProtocolError(
            "InvalidResponse",
            f"HTTP {status}, body is not a JSON object: {excerpt(raw)!r}",
            http_status=status,
            retry_after_s=retry_after_s(retry_after),
        )
    code = data.get("Code")
    if status == 200 and not code:
        return data
    code_text = str(code) if code else f"HTTP{status}"
    cls = error_class_for(code_text, status)
    if not code and cls is PermanentApiError:
        # The service names every error it sends; a 4xx without a Code never reached it.
        cls = GatewayError
    raise cls(
        code_text,
        _message(data),
        request_id=str(data.get("RequestId") or "") or None,
        http_status=status,
        retry_after_s=retry_after_s(retry_after),
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


def int_field(data: dict[str, Any], name: str, raw_excerpt: str) -> int:
    """``data[name]`` as a non-negative integer, else :class:`ProtocolError`."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(
            "InvalidResponse",
            f"{name} missing or not a non-negative integer: {raw_excerpt!r}",
            request_id=str(data.get("RequestId") or "") or None,
            http_status=200,
        )
    return value


def poll_page(data: dict[str, Any], raw: str) -> PollPage:
    """A ``PollTaskResult`` answer as a :class:`PollPage`; ``raw`` is its excerpt."""
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
        page_num=int_field(data, "CurrentPageNum", raw),
        page_size=int_field(data, "PageSize", raw),
        total_items=int_field(data, "TotalItemNum", raw),
        total_pages=int_field(data, "TotalPageNum", raw),
        next_page=bool(data.get("NextPage")),
        items=items,
    )
