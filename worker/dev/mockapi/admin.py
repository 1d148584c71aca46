"""Admin endpoints under ``/_admin/``: stats, seeding, faults, keys. No authentication.

The stand-in binds loopback by default; these routes exist for tests, demos and
benchmarks, and never go through fault injection. Bad input answers 400 with
``{"error": "...", "field": "<name>"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from worker.dev.mockapi.auth import AcceptedKey, Authenticator
from worker.dev.mockapi.faults import FaultInjector, InvalidFault
from worker.dev.mockapi.replies import json_response
from worker.dev.mockapi.state import TaskStore
from worker.dev.mockapi.stats import RequestStats

MAX_SEED_COUNT = 1_000_000
"""Most numbers one ``/_admin/seed`` call may generate."""
MAX_ADMIN_BODY_BYTES = 256 * 1024 * 1024
"""Largest admin request body: seeding a million explicit ids takes ~40 MB of JSON."""
_REPEATED_IDS_SHOWN = 100


class AdminError(Exception):
    """Invalid admin input; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def full_stats(stats: RequestStats, store: TaskStore, injector: FaultInjector) -> dict[str, object]:
    """The ``/_admin/stats`` document: request counters plus what the store saw."""
    repeated = store.confirmed_more_than_once()
    return {
        **stats.snapshot(),
        "faults_injected": dict(injector.injected),
        "confirmed": store.confirmed_count,
        "pending": store.pending_count,
        "reconfirm_attempts": store.reconfirm_attempts,
        "confirmed_more_than_once": len(repeated),
        "confirmed_more_than_once_ids": repeated[:_REPEATED_IDS_SHOWN],
        "dropped_confirmations": store.dropped,
    }


class AdminHandlers:
    """The ``/_admin/`` routes over one stand-in's components."""

    def __init__(
        self,
        store: TaskStore,
        injector: FaultInjector,
        verifier: Authenticator,
        stats: RequestStats,
    ) -> None:
        self._store = store
        self._injector = injector
        self._verifier = verifier
        self._stats = stats

    def register(self, router: web.UrlDispatcher) -> None:
        """Add every admin route to ``router``."""
        router.add_get("/_admin/stats", self.get_stats)
        router.add_post("/_admin/reset-stats", self.reset_stats)
        router.add_post("/_admin/seed", self.seed)
        router.add_get("/_admin/faults", self.get_faults)
        router.add_post("/_admin/faults", self.update_faults)
        router.add_post("/_admin/keys", self.replace_keys)
        router.add_get("/_admin/confirmed", self.confirmed)
        router.add_get("/_admin/pending", self.pending)

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /_admin/stats``."""
        return json_response(full_stats(self._stats, self._store, self._injector))

    async def reset_stats(self, request: web.Request) -> web.Response:
        """``POST /_admin/reset-stats``: zero request and fault counters (tasks stay)."""
        self._stats.reset()
        self._injector.injected.clear()
        return json_response({"reset": True})

    async def seed(self, request: web.Request) -> web.Response:
        """``POST /_admin/seed`` with ``{"ids": [...]}`` or ``{"count": N}``, plus
        optional ``task_no``, ``domain`` and ``status`` (2 or 3); answers the added ids."""
        try:
            body = await _json_object(request)
            fields = _seed_fields(body)
            if "count" in body:
                added = self._store.seed_random(_seed_count(body["count"]), **fields)
            else:
                added = self._store.seed(_seed_ids(body.get("ids")), **fields)
        except AdminError as exc:
            return _bad_request(exc)
        return json_response(
            {"ids": added, "added": len(added), "pending": self._store.pending_count}
        )

    async def get_faults(self, request: web.Request) -> web.Response:
        """``GET /_admin/faults``: the current fault settings."""
        return json_response(self._injector.faults.as_dict())

    async def update_faults(self, request: web.Request) -> web.Response:
        """``POST /_admin/faults``: partial update, validated all or nothing."""
        try:
            self._injector.faults.update(await _json_object(request))
        except AdminError as exc:
            return _bad_request(exc)
        except InvalidFault as exc:
            return _bad_request(AdminError(exc.field, exc.message))
        return json_response(self._injector.faults.as_dict())

    async def replace_keys(self, request: web.Request) -> web.Response:
        """``POST /_admin/keys``: one key object, or ``{"keys": [...]}``, replaces all keys."""
        try:
            body = await _json_object(request)
            raw_keys = body.get("keys", [body])
            if not isinstance(raw_keys, list) or not raw_keys:
                raise AdminError("keys", "must be a non-empty list of key objects")
            keys = [_credentials(raw) for raw in raw_keys]
        except AdminError as exc:
            return _bad_request(exc)
        self._verifier.replace_keys(keys)
        return json_response({"access_key_ids": self._verifier.key_ids()})

    async def confirmed(self, request: web.Request) -> web.Response:
        """``GET /_admin/confirmed``: every confirmed number, in confirmation order."""
        ids = self._store.confirmed_ids()
        return json_response({"ids": ids, "count": len(ids)})

    async def pending(self, request: web.Request) -> web.Response:
        """``GET /_admin/pending?limit=N``: unacknowledged numbers in poll order."""
        raw = request.query.get("limit")
        if raw is not None and not (raw.isascii() and raw.isdigit()):
            return _bad_request(AdminError("limit", f"must be a non-negative integer, got {raw!r}"))
        limit = int(raw) if raw is not None else None
        ids = self._store.pending_ids(limit)
        return json_response({"ids": ids, "count": self._store.pending_count})


async def _read_body(request: web.Request) -> bytes:
    # Not request.read(): the app's client_max_size is sized for API requests, and admin
    # seeding legitimately sends far more.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_ADMIN_BODY_BYTES:
            raise AdminError("body", f"is larger than {MAX_ADMIN_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await _read_body(request))
    except orjson.JSONDecodeError:
        raise AdminError("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise AdminError("body", "must be a JSON object")
    return body


def _bad_request(exc: AdminError) -> web.Response:
    return json_response({"error": str(exc), "field": exc.field}, status=400)


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise AdminError(name, f"must be a non-empty string, got {value!r}")
    return value


def _seed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status")
    if status is not None and status not in (2, 3):
        raise AdminError("status", f"must be 2 (succeeded) or 3 (failed), got {status!r}")
    return {
        "task_no": _optional_str(body, "task_no"),
        "domain": _optional_str(body, "domain"),
        "status": status,
    }


def _seed_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED_COUNT:
        raise AdminError("count", f"must be an integer from 0 to {MAX_SEED_COUNT}, got {value!r}")
    return value


def _seed_ids(value: object) -> list[str]:
    if not isinstance(value, list):
        raise AdminError("ids", "must be a list of task-detail numbers (or give count)")
    for item in value:
        if not isinstance(item, str) or not item:
            raise AdminError("ids", f"every id must be a non-empty string, got {item!r}")
    return value


def _credentials(raw: object) -> AcceptedKey:
    if not isinstance(raw, dict):
        raise AdminError("keys", "each key must be a JSON object")
    key_id = raw.get("access_key_id")
    secret = raw.get("access_key_secret")
    if not isinstance(key_id, str) or not key_id:
        raise AdminError("access_key_id", "must be a non-empty string")
    if not isinstance(secret, str) or not secret:
        raise AdminError("access_key_secret", "must be a non-empty string")
    return AcceptedKey(key_id, secret, _optional_str(raw, "security_token"))
