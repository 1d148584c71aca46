"""The stand-in's aiohttp application: the Domain API at ``/`` and admin under ``/_admin/``.

An API request goes through, in order: latency; transport faults (reset, hang, HTML proxy
page), which never reach the "service"; parsing; the action check; authentication; service
faults (quota, throttling, 5xx); the action; and last the truncated-answer fault. The hot
path does no logging and O(ids) work.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from worker.api.signing import FORM_CONTENT_TYPE
from worker.dev.mockapi.actions import ACKNOWLEDGE, ACTIONS, acknowledge, poll, task_detail_numbers
from worker.dev.mockapi.admin import AdminHandlers
from worker.dev.mockapi.auth import Authenticator, SignedRequest
from worker.dev.mockapi.faults import Fault, FaultInjector
from worker.dev.mockapi.replies import (
    RETRY_AFTER_HEADER,
    ApiFailure,
    error_response,
    invalid_parameter,
    missing_parameter,
    raw_json_response,
)
from worker.dev.mockapi.state import TaskStore
from worker.dev.mockapi.stats import UNKNOWN_ACTION, RequestStats

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body accepted (aiohttp answers 413 above it)."""
MAX_PARAMS = 20_000
"""Most query or form fields parsed from one request, so junk cannot cost unbounded work."""

_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_SO_LINGER_RESET = struct.pack("ii", 1, 0)  # linger on, 0 s: close() sends RST, not FIN


@dataclass(slots=True)
class MockService:
    """Everything one running stand-in holds; shared by the API and admin handlers."""

    store: TaskStore
    injector: FaultInjector
    verifier: Authenticator
    stats: RequestStats = field(default_factory=RequestStats)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at shutdown: hung requests stop waiting."""


def build_app(service: MockService) -> web.Application:
    """The application serving ``service``: API at ``/`` (GET and POST), admin routes."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    api = ApiHandler(service)
    app.router.add_route("GET", "/", api.handle)
    app.router.add_route("POST", "/", api.handle)
    AdminHandlers(service.store, service.injector, service.verifier, service.stats).register(
        app.router
    )
    return app


class ApiHandler:
    """Answers Domain API requests the way the service does, faults included."""

    def __init__(self, service: MockService) -> None:
        self._service = service
        self._stats = service.stats
        self._injector = service.injector

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler for ``/``."""
        self._stats.request_started()
        try:
            return await self._answer(request)
        finally:
            self._stats.request_finished()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        delay_s = self._injector.delay_s()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        fault = self._injector.transport_fault()
        if fault is not None:
            return await self._transport_fault(request, fault)
        body = await request.read()
        try:
            payload = self._serve(request, body)
        except ApiFailure as failure:
            self._stats.by_error_code[failure.code] += 1
            return error_response(failure, request.host)
        data = orjson.dumps(payload)
        if self._injector.truncates():
            data = data[: len(data) // 2]
        return raw_json_response(data)

    def _serve(self, request: web.Request, body: bytes) -> dict[str, object]:
        signed = signed_request(request, body)
        action = self._action(signed)
        self._service.verifier.verify(signed)
        if action == ACKNOWLEDGE:
            ids = task_detail_numbers(signed.params)
            self._stats.batch_sizes[len(ids)] += 1
            self._refuse_if_faulty()
            return acknowledge(ids, self._service.store, self._injector.drop_decider())
        self._refuse_if_faulty()
        return poll(signed.params, self._service.store)

    def _action(self, signed: SignedRequest) -> str:
        action = signed.action
        if action not in ACTIONS:
            self._stats.by_action[UNKNOWN_ACTION] += 1
            if not action:
                raise missing_parameter("x-acs-action" if signed.is_v3 else "Action")
            raise ApiFailure(
                404,
                "InvalidAction.NotFound",
                f"Specified api is not found, please check your url and method. Action={action}",
            )
        self._stats.by_action[action] += 1
        return action

    def _refuse_if_faulty(self) -> None:
        fault = self._injector.service_fault()
        if fault is None:
            return
        if fault is Fault.ERROR_503:
            raise ApiFailure(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            )
        if fault is Fault.ERROR_500:
            raise ApiFailure(
                500,
                "InternalError",
                "The request processing has failed due to some unknown error.",
            )
        retry_after_ms = self._injector.faults.retry_after_ms
        headers = {RETRY_AFTER_HEADER: str(retry_after_ms)} if retry_after_ms is not None else {}
        raise ApiFailure(
            400,
            "Throttling.User",
            "Request was denied due to user flow control.",
            headers=headers,
        )

    async def _transport_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault is Fault.HTML:
            return web.Response(status=502, text=_HTML_502, content_type="text/html")
        if fault is Fault.HANG:
            # Bounded by hang_s, released at shutdown; aiohttp cancels this handler (and
            # so the wait) when the client goes away, see handler_cancellation in server.py.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._injector.faults.hang_s):
                    await self._service.closing.wait()
        return abort_connection(request, reset=fault is Fault.RESET)


def abort_connection(request: web.Request, *, reset: bool) -> web.Response:
    """Close the client's connection without an answer; with ``reset``, as a TCP RST.

    The returned response is never sent (the transport is gone); aiohttp needs one.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _SO_LINGER_RESET)
        transport.abort()
    return web.Response(status=204)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Decode ``a=1&b=2`` like ``parse_qsl(keep_blank_values=True, errors="strict")``.

    Three times faster on the hot path: a part without ``%`` or ``+`` (every task-detail
    number) needs no decoding. Raises ``ValueError`` on too many fields or invalid UTF-8.
    """
    parts = text.split("&")
    if len(parts) > MAX_PARAMS:
        raise ValueError(f"more than {MAX_PARAMS} parameters")
    pairs: list[tuple[str, str]] = []
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote_plus(name, errors="strict")
            value = unquote_plus(value, errors="strict")
        pairs.append((name, value))
    return pairs


def signed_request(request: web.Request, body: bytes) -> SignedRequest:
    """Parse what authentication and the actions read: query, form body, headers."""
    try:
        query = parse_pairs(request.rel_url.raw_query_string)
        params = dict(query)
        if body and request.content_type == FORM_CONTENT_TYPE:
            params.update(parse_pairs(body.decode()))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise invalid_parameter("query or body", f"cannot be parsed: {exc}") from None
    return SignedRequest(
        method=request.method,
        raw_path=request.rel_url.raw_path,
        query=query,
        headers=request.headers,
        body=body,
        params=params,
    )
