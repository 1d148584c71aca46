"""What a user would write instead of ackworker, with the official SDK.

``python -m bench.sdk_peers MODE --redis-url URL --endpoint HOST:PORT`` pops numbers from the
Redis list ``bench:list`` and acknowledges them with ``alibabacloud_domain20180129``:

- ``one``: BLPOP one number, one SDK call per number (the loop people write first);
- ``batch``: LPOP up to 100, one SDK call per 100, sequential;
- ``async``: the SDK's async client, 8 coroutines each doing LPOP 100 and a call.

It stops when the list is empty or after ``--max-s`` seconds, and prints one JSON line:
items sent, requests, confirmed (the sum of ``Result``), errors, and the wall and CPU time
of its loop (``time.process_time``: this process only, imports and set-up excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio

# The SDKs ship without type information; these imports are untyped on purpose.
from alibabacloud_domain20180129 import models as domain_models  # type: ignore[import-untyped]
from alibabacloud_domain20180129.client import Client  # type: ignore[import-untyped]
from alibabacloud_tea_openapi import models as openapi_models  # type: ignore[import-untyped]

ACCESS_KEY_ID, ACCESS_KEY_SECRET = "testid", "testsecret"
LIST = "bench:list"
BATCH = 100
IN_FLIGHT = 8


@dataclass(slots=True)
class PeerTally:
    """What one peer did."""

    mode: str
    items: int = 0
    requests: int = 0
    confirmed: int = 0
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    process_cpu_s: float = 0.0


def sdk_client(endpoint: str) -> Any:
    """The official client, configured as its documentation shows, pointed at the stand-in."""
    config = openapi_models.Config(
        access_key_id=ACCESS_KEY_ID,
        access_key_secret=ACCESS_KEY_SECRET,
        endpoint=endpoint,
        protocol="http",
    )
    return Client(config)


def request(ids: list[str]) -> Any:
    """An ``AcknowledgeTaskResult`` request for ``ids``."""
    return domain_models.AcknowledgeTaskResultRequest(task_detail_no=ids, lang="en")


def count(tally: PeerTally, client: Any, ids: list[str]) -> None:
    """Make one SDK call for ``ids`` and add its outcome to ``tally``."""
    tally.items += len(ids)
    tally.requests += 1
    try:
        tally.confirmed += int(client.acknowledge_task_result(request(ids)).body.result)
    except Exception:  # a user's loop would log and go on; we count
        tally.errors += 1


def run_one(args: argparse.Namespace, tally: PeerTally, deadline: float) -> None:
    """(a) BLPOP one number, one call per number."""
    client, store = sdk_client(args.endpoint), redis.Redis.from_url(args.redis_url)
    while time.monotonic() < deadline:
        popped = store.blpop([LIST], timeout=1)
        if popped is None:
            break
        ids = [popped[1].decode()]  # type: ignore[index]
        count(tally, client, ids)
    store.close()


def run_batch(args: argparse.Namespace, tally: PeerTally, deadline: float) -> None:
    """(b) LPOP up to 100, one call per 100, sequential."""
    client, store = sdk_client(args.endpoint), redis.Redis.from_url(args.redis_url)
    while time.monotonic() < deadline:
        popped: list[bytes] | None = store.lpop(LIST, BATCH)  # type: ignore[assignment]
        if not popped:
            break
        ids = [number.decode() for number in popped]
        count(tally, client, ids)
    store.close()


async def run_async(args: argparse.Namespace, tally: PeerTally, deadline: float) -> None:
    """(c) The async client, 8 coroutines each popping 100 at a time."""
    client = sdk_client(args.endpoint)
    store = redis.asyncio.Redis.from_url(args.redis_url, max_connections=IN_FLIGHT)

    async def one_lane() -> None:
        while time.monotonic() < deadline:
            popped: list[bytes] | None = await store.lpop(LIST, BATCH)
            if not popped:
                return
            ids = [number.decode() for number in popped]
            tally.items += len(ids)
            tally.requests += 1
            try:
                answer = await client.acknowledge_task_result_async(request(ids))
                tally.confirmed += int(answer.body.result)
            except Exception:  # a user's loop would log and go on; we count
                tally.errors += 1

    await asyncio.gather(*(one_lane() for _ in range(IN_FLIGHT)))
    await store.aclose()


def run(args: argparse.Namespace) -> PeerTally:
    """Run the chosen peer and time its loop."""
    tally = PeerTally(args.mode)
    started, cpu0 = time.monotonic(), time.process_time()
    deadline = started + args.max_s
    if args.mode == "one":
        run_one(args, tally, deadline)
    elif args.mode == "batch":
        run_batch(args, tally, deadline)
    else:
        asyncio.run(run_async(args, tally, deadline))
    tally.wall_s, tally.cpu_s = time.monotonic() - started, time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    tally.process_cpu_s = usage.ru_utime + usage.ru_stime
    return tally


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The peer's options."""
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_peers", description=__doc__)
    parser.add_argument("mode", choices=("one", "batch", "async"))
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--endpoint", required=True, help="the stand-in's host:port")
    parser.add_argument("--max-s", type=float, default=600.0, help="stop after this long")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asdict(run(parse_args()))) + "\n")
