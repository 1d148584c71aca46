"""``ackworker enqueue``: put task-detail numbers on the stream from the command line.

The work is :func:`worker.store.enqueue.enqueue`'s; this module opens Redis for it and turns
an invalid id into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import anyio

from worker.config.settings import Settings
from worker.config.topology import keys_for, open_redis
from worker.store.enqueue import InvalidIdError, enqueue


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
        print(f"ackworker: {exc}", file=sys.stderr)
        return 2
    print(f"enqueued {added} to {keys_for(settings).tasks}")
    return 0
