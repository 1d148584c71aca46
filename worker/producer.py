"""Putting task-detail numbers on the stream: ``ackworker enqueue`` and :func:`enqueue`.

Upstream pollers written in Python call :func:`enqueue`; everyone else runs
``ackworker enqueue``. Both validate every id before writing any, pipeline their XADDs in
chunks, and create the stream and consumer group when missing.
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio

from worker.entries import is_valid_id
from worker.errors import AckworkerError
from worker.keys import Keys
from worker.redis_conn import RedisClient, keys_for, open_redis
from worker.settings import Settings
from worker.source import ensure_group

CHUNK = 1000


class InvalidIdError(AckworkerError, ValueError):
    """An id is not 1 to 64 characters of letters, digits, ``-`` and ``_``."""


async def enqueue(
    redis: RedisClient,
    keys: Keys,
    ids: Iterable[str],
    *,
    task_no: str | None = None,
    domain: str | None = None,
    account: str | None = None,
) -> int:
    """Append ``ids`` to ``<prefix>:tasks``; returns how many entries were added.

    Raises :class:`InvalidIdError` naming the first bad id before anything is written.
    """
    numbers = list(ids)
    for number in numbers:
        if not is_valid_id(number):
            raise InvalidIdError(
                f"invalid task-detail number {number[:80]!r}: "
                "must be 1 to 64 letters, digits, '-' or '_'"
            )
    extra: dict[str | bytes, str | bytes] = {}
    if task_no:
        extra["task_no"] = task_no
    if domain:
        extra["domain"] = domain
    if account and account != "default":
        extra["account"] = account
    await ensure_group(redis, keys)
    for start in range(0, len(numbers), CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for number in numbers[start : start + CHUNK]:
                fields: dict[str | bytes, str | bytes] = {"id": number, **extra}
                pipe.xadd(keys.tasks, fields)  # type: ignore[arg-type]
            await pipe.execute()
    return len(numbers)


def enqueue_command(
    settings: Settings, ids: list[str], *, task_no: str | None, domain: str | None
) -> int:
    """``ackworker enqueue``: prints how many were added; exit 2 on an invalid id."""

    async def main() -> int:
        redis = open_redis(settings, max_connections=2)
        try:
            keys = keys_for(settings)
            return await enqueue(redis, keys, ids, task_no=task_no, domain=domain)
        finally:
            await redis.aclose()

    try:
        added = anyio.run(main)
    except InvalidIdError as exc:
        import sys

        print(f"ackworker: {exc}", file=sys.stderr)
        return 2
    print(f"enqueued {added} to {keys_for(settings).tasks}")
    return 0
