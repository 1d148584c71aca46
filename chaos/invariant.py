"""The invariant every scenario ends on, and the ledger it is read from.

Every number ever enqueued is confirmed at the stand-in, or in ``<prefix>:dead`` with a
reason, or listed in ``<prefix>:reconcile``, or (only where the scenario says why) still in
``<prefix>:tasks``. Never silently gone. Besides, the stand-in counts numbers *submitted
again* after they were confirmed (``confirmed_more_than_once``): each scenario says how many
it can explain.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import redis

from chaos.procs import MockApiProc
from worker.store.keys import Keys

_PAGE = 10_000


@dataclass(slots=True)
class Ledger:
    """Where every number stands, read from Redis and the stand-in after a scenario."""

    confirmed: set[str]
    dead: dict[str, str]
    """number -> reason; invalid entries (no number) are counted in ``dead_reasons`` only."""
    dead_reasons: Counter[str]
    reconciled: set[str]
    in_stream: set[str]
    stream_entries: int
    resubmitted: int
    """Numbers the stand-in saw submitted again after it had confirmed them."""
    lost: list[str] = field(default_factory=list)
    stream_counted: bool = False

    def summary(self) -> str:
        dead = ", ".join(f"{r} {n}" for r, n in sorted(self.dead_reasons.items())) or "none"
        return (
            f"confirmed {len(self.confirmed)}, dead {dead}, reconcile {len(self.reconciled)}, "
            f"in stream {self.stream_entries}, re-submitted {self.resubmitted}, "
            f"lost {len(self.lost)}"
        )


def _stream(client: redis.Redis, key: str) -> list[dict[bytes, bytes]]:
    rows: list[dict[bytes, bytes]] = []
    start = "-"
    for _ in range(10_000):  # bounded: 100 M entries
        page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            key, min=start, count=_PAGE
        )
        if not page:
            break
        rows.extend(fields for _, fields in page)
        last_id = page[-1][0].decode()
        start = "(" + last_id
        if len(page) < _PAGE:
            break
    return rows


def read_ledger(client: redis.Redis, keys: Keys, api: MockApiProc) -> Ledger:
    """Read the outcome of everything from Redis and the stand-in."""
    dead: dict[str, str] = {}
    reasons: Counter[str] = Counter()
    for fields in _stream(client, keys.dead):
        reason = fields.get(b"reason", b"?").decode()
        reasons[reason] += 1
        number = fields.get(b"id", b"").decode("utf-8", "replace")
        if number:
            dead[number] = reason
    reconciled: set[str] = set()
    for fields in _stream(client, keys.reconcile):
        reconciled.update(json.loads(fields[b"ids"]))
    in_stream: set[str] = set()
    tasks = _stream(client, keys.tasks)
    for fields in tasks:
        value = fields.get(b"id")
        if value:
            in_stream.add(value.decode("utf-8", "replace"))
    stats = api.stats()
    return Ledger(
        confirmed=api.confirmed(),
        dead=dead,
        dead_reasons=reasons,
        reconciled=reconciled,
        in_stream=in_stream,
        stream_entries=len(tasks),
        resubmitted=int(stats["confirmed_more_than_once"]),
    )


def check_invariant(
    client: redis.Redis,
    keys: Keys,
    api: MockApiProc,
    enqueued: list[str],
    *,
    stream_allowed: bool = False,
) -> Ledger:
    """The ledger, with ``lost`` listing every enqueued number found nowhere.

    With ``stream_allowed`` a number still in the task stream counts as accounted for.
    """
    ledger = read_ledger(client, keys, api)
    accounted = ledger.confirmed | ledger.dead.keys() | ledger.reconciled
    if stream_allowed:
        accounted = accounted | ledger.in_stream
        ledger.stream_counted = True
    ledger.lost = [n for n in enqueued if n not in accounted]
    return ledger
