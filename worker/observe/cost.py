"""What the fleet's API requests cost: the request counts each heartbeat carries, and the
requests per confirmed number that ``ackworker status`` shows.

Both kinds of request spend the account's quota: ``AcknowledgeTaskResult`` and the
``PollTaskResult`` calls that verify a shortfall. Every ``ackworker run`` puts its counts
since start in its heartbeat (``acknowledge_requests`` and ``poll_requests``, beside
``confirmed``) through the runner's vitals, so a reader adds up the live workers without
asking any of them. :mod:`worker.store.heartbeat` writes the whole hash and reads back the
fields it knows; these are read here, so the names are written and read in one module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.store.connection import RedisClient
from worker.store.keys import Keys
from worker.totals import ACTIONS, Totals

REQUEST_FIELDS = {action: f"{action}_requests" for action in ACTIONS}
"""The heartbeat field of each action's request count: ``acknowledge_requests``,
``poll_requests``."""


def request_vitals(totals: Totals) -> dict[str, int]:
    """The heartbeat fields of ``totals``' requests since start (attempts), by action."""
    by_action = totals.requests_by_action()
    return {field: by_action[action] for action, field in REQUEST_FIELDS.items()}


def _count(raw: bytes | None) -> int:
    text = raw.decode("ascii", "replace") if raw is not None else ""
    return int(text) if text.isdigit() else 0


async def read_requests(
    redis: RedisClient, keys: Keys, consumers: Sequence[str]
) -> list[dict[str, int]]:
    """Each consumer's requests since start by action, read from its heartbeat, in the order
    of ``consumers``; 0 where a field is missing (a worker of an older version, or one that
    stopped since its beat was listed)."""
    fields = list(REQUEST_FIELDS.values())
    async with redis.pipeline(transaction=False) as pipe:
        for consumer in consumers:
            pipe.hmget(keys.heartbeat(consumer), fields)
        replies: list[list[bytes | None]] = await pipe.execute()
    return [{a: _count(raw) for a, raw in zip(REQUEST_FIELDS, r, strict=True)} for r in replies]


def fleet_requests(workers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``requests`` section of ``ackworker status``, summed over the live workers (each a
    mapping with ``requests_by_action`` and ``confirmed``, counted since it started).

    ``per_confirmed`` is requests (attempts, both actions) per number confirmed, to four
    significant digits (a fleet near its best sends one request per ``batch_size`` numbers:
    0.001 at 1000); None while the live workers have confirmed nothing, when there is no
    ratio to give.
    """
    by_action = dict.fromkeys(ACTIONS, 0)
    for worker in workers:
        for action, count in worker["requests_by_action"].items():
            by_action[action] = by_action.get(action, 0) + count
    total = sum(by_action.values())
    confirmed = sum(int(worker["confirmed"]) for worker in workers)
    return {
        "by_action": by_action,
        "total": total,
        "confirmed": confirmed,
        "per_confirmed": float(f"{total / confirmed:.4g}") if confirmed else None,
    }
