"""``ackworker reconcile list``: the batches whose answers did not add up, oldest first.

Each ``<prefix>:reconcile`` entry is written by the settle step (see ``worker.pipeline.processor``):
``batch_id``, ``kind`` (``shortfall`` or ``overcount``), ``verified`` (``true`` when
``PollTaskResult`` was asked which numbers stayed unconfirmed), the counts, and ``ids`` and
``request_ids`` as JSON lists; a verified record also has ``unconfirmed`` and ``unknown``
(JSON lists), ``elsewhere`` and ``rounds``. The JSON form gives the counts as numbers, the
lists as lists and ``verified`` as a boolean (false for records written before it existed),
so ``jq`` can feed the ids to ``PollTaskResult`` checks or ``ackworker enqueue``.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import orjson

from worker.commands.common import Row, StreamScan, print_json, render_table, run_with_redis
from worker.config.settings import Settings
from worker.store.connection import RedisClient
from worker.store.keys import Keys

_COUNTS = ("submitted", "confirmed", "shortfall", "overcount", "elsewhere", "rounds")
_LISTS = ("ids", "request_ids")
_VERIFIED_LISTS = ("unconfirmed", "unknown")  # only verified records have them
_SHOWN_COUNTS = _COUNTS[:4]


async def list_reconcile(redis: RedisClient, keys: Keys, limit: int) -> tuple[list[Row], bool]:
    """The oldest ``limit`` reconcile records, and whether there are more."""
    scan = StreamScan(redis, keys.reconcile, cap=limit + 1)
    rows = [row async for page in scan.pages() for row in page]
    return rows[:limit], len(rows) > limit


def record_json(row: Row) -> dict[str, Any]:
    """One record with numbers as numbers and lists as lists; anything unparsable as sent."""
    entry_id, fields = row
    shown: dict[str, Any] = {"entry_id": entry_id, **fields}
    for name in _COUNTS:
        if fields.get(name, "").isdigit():
            shown[name] = int(fields[name])
    for name in (*_LISTS, *(n for n in _VERIFIED_LISTS if n in fields)):
        # Unparsable text is kept as it is: an operator still wants to see it.
        with suppress(orjson.JSONDecodeError):
            shown[name] = orjson.loads(fields[name]) if name in fields else None
    shown["verified"] = fields.get("verified") == "true"
    return shown


def _count(value: object) -> int | str:
    return len(value) if isinstance(value, list) else "?"


def _table(rows: list[Row]) -> str:
    # The lists are shown as how many numbers each holds.
    headers = (
        "entry",
        "at",
        "kind",
        "batch_id",
        "verified",
        *_SHOWN_COUNTS,
        "ids",
        *_VERIFIED_LISTS,
    )
    cells = []
    for row in rows:
        record = record_json(row)
        verified = record["verified"]
        cells.append(
            (
                row[0],
                record.get("at", ""),
                record.get("kind", ""),
                record.get("batch_id", ""),
                "yes" if verified else "no",
                *(record.get(name, "") for name in _SHOWN_COUNTS),
                _count(record.get("ids")),
                _count(record.get("unconfirmed")) if verified else "",
                _count(record.get("unknown")) if verified else "",
            )
        )
    return render_table(headers, cells)


def reconcile_list_command(settings: Settings, *, limit: int, as_json: bool) -> int:
    """``ackworker reconcile list [--limit N] [--json]``."""

    async def main(redis: RedisClient, keys: Keys) -> int:
        rows, more = await list_reconcile(redis, keys, limit)
        if as_json:
            print_json({"records": [record_json(r) for r in rows], "more": more})
            return 0
        print(_table(rows) if rows else "no reconcile records")
        if more:
            print(f"(the oldest {limit} shown; there are more: raise --limit)")
        return 0

    return run_with_redis(settings, main)
