"""``ackworker reconcile list``: the batches whose answers did not add up, oldest first.

Each ``<prefix>:reconcile`` entry is written by the settle step (see ``worker.processor``):
``batch_id``, ``kind`` (``shortfall`` or ``overcount``), the counts, and ``ids`` and
``request_ids`` as JSON lists. The JSON form gives the counts as numbers and the lists as
lists, so ``jq`` can feed the ids to ``PollTaskResult`` checks or ``ackworker enqueue``.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import orjson

from worker.keys import Keys
from worker.ops import Row, StreamScan, print_json, render_table, run_with_redis
from worker.redis_conn import RedisClient
from worker.settings import Settings

_COUNTS = ("submitted", "confirmed", "shortfall", "overcount")
_LISTS = ("ids", "request_ids")


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
    for name in _LISTS:
        # Unparsable text is kept as it is: an operator still wants to see it.
        with suppress(orjson.JSONDecodeError):
            shown[name] = orjson.loads(fields[name]) if name in fields else None
    return shown


def _table(rows: list[Row]) -> str:
    headers = ("entry", "at", "kind", "batch_id", *_COUNTS, "ids")
    cells = []
    for row in rows:
        record = record_json(row)
        ids = record.get("ids")
        cells.append(
            (
                row[0],
                record.get("at", ""),
                record.get("kind", ""),
                record.get("batch_id", ""),
                *(record.get(name, "") for name in _COUNTS),
                len(ids) if isinstance(ids, list) else "?",
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
