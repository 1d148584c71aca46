"""The bare reference loop: what acknowledging costs with none of ackworker's machinery.

``python -m bench.bare_loop --redis-url URL --endpoint URL``: one reader ``XREADGROUP``s up
to ``--batch-size`` entries at a time into a queue of ``--in-flight`` batches; as many senders
sign each batch with :mod:`worker.api.signing` (V3), POST it with aiohttp, and ``XACK`` + ``XDEL``
its entries in one pipeline (the deletion keeps ``XLEN`` the backlog, as the worker does).
No dedupe, no limiter, no retries, no reconciliation: an error answer is counted and its
entries are left pending. Runs until SIGTERM or ``--max-s``; prints one JSON line of totals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass

import aiohttp
import orjson
from redis.asyncio import Redis

from worker.api import signing
from worker.store.keys import Keys

ACCESS_KEY_ID, ACCESS_KEY_SECRET = "testid", "testsecret"
Batch = list[tuple[bytes, str]]


@dataclass(slots=True)
class LoopTotals:
    """What the loop did."""

    batches: int = 0
    confirmed: int = 0
    errors: int = 0


def sign(host: str, ids: list[str]) -> tuple[dict[str, str], bytes]:
    """Headers and form body of one V3-signed ``AcknowledgeTaskResult`` request."""
    body = signing.form_body([("Lang", "en"), *signing.flatten_list("TaskDetailNo", ids)])
    hashed = hashlib.sha256(body).hexdigest()
    headers = {
        "host": host,
        "content-type": signing.FORM_CONTENT_TYPE,
        "x-acs-action": "AcknowledgeTaskResult",
        "x-acs-content-sha256": hashed,
        "x-acs-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "x-acs-version": "2018-01-29",
    }
    canonical = signing.v3_canonical("POST", "/", (), headers, hashed)
    signature = signing.v3_signature(ACCESS_KEY_SECRET, canonical)
    headers["Authorization"] = signing.v3_authorization(
        ACCESS_KEY_ID, canonical.signed_headers, signature
    )
    return headers, body


class BareLoop:
    """One reader, ``in_flight`` senders, a bounded queue between them."""

    def __init__(self, redis: Redis, session: aiohttp.ClientSession, args: argparse.Namespace):
        self._redis, self._session = redis, session
        self._keys = Keys.for_prefix(args.prefix)
        self._url = args.endpoint.rstrip("/") + "/"
        self._host = self._url.removeprefix("http://").rstrip("/")
        self._batch_size = args.batch_size
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=args.in_flight)
        self.totals = LoopTotals()

    async def read(self) -> None:
        """XREADGROUP batches into the queue, forever."""
        keys = self._keys
        while True:
            reply = await self._redis.xreadgroup(
                keys.group, "bare-1", {keys.tasks: ">"}, count=self._batch_size, block=100
            )
            for _stream, entries in reply or ():
                batch = [(entry_id, fields[b"id"].decode()) for entry_id, fields in entries]
                await self._queue.put(batch)

    async def send(self) -> None:
        """Sign, POST and settle batches from the queue, forever."""
        while True:
            batch = await self._queue.get()
            if await self._post([number for _, number in batch]):
                await self._settle([entry_id for entry_id, _ in batch])

    async def _post(self, ids: list[str]) -> bool:
        headers, body = sign(self._host, ids)
        self.totals.batches += 1
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                raw = await response.read()
            answer = orjson.loads(raw)
        except (aiohttp.ClientError, orjson.JSONDecodeError):
            answer = None
        if not isinstance(answer, dict) or response.status != 200 or "Result" not in answer:
            self.totals.errors += 1
            return False
        self.totals.confirmed += int(answer["Result"])
        return True

    async def _settle(self, entry_ids: list[bytes]) -> None:
        keys = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xack(keys.tasks, keys.group, *entry_ids)
            pipe.xdel(keys.tasks, *entry_ids)
            await pipe.execute()


async def main(args: argparse.Namespace) -> LoopTotals:
    """Run the loop until SIGTERM, SIGINT or ``--max-s``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    redis = Redis.from_url(args.redis_url, max_connections=args.in_flight + 2)
    connector = aiohttp.TCPConnector(limit=args.in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        bare = BareLoop(redis, session, args)
        tasks = [asyncio.create_task(bare.read())]
        tasks += [asyncio.create_task(bare.send()) for _ in range(args.in_flight)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.max_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await redis.aclose()
    return bare.totals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The loop's options."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--endpoint", required=True, help="the stand-in's base URL")
    parser.add_argument("--prefix", default="bench", help="key prefix, as ACKWORKER_KEY_PREFIX")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--max-s", type=float, default=600.0, help="stop after this long")
    return parser.parse_args(argv)


if __name__ == "__main__":
    totals = asyncio.run(main(parse_args()))
    sys.stdout.write(orjson.dumps(asdict(totals)).decode() + "\n")
