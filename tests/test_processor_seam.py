"""The pipeline on a real redis-server with a scripted API at the Acknowledger seam.

Covers the outcomes the stand-in cannot produce on demand (overcount) and the decision paths
(split on a permanent error, retries exhausted, shortfall after the resend).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from tests.conftest import RedisServer
from tests.harness import (
    ScriptedApi,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
)
from worker.api.client import AckResult
from worker.errors import AuthError, PermanentApiError, ServerError
from worker.store.enqueue import enqueue
from worker.store.keys import Keys

pytestmark = pytest.mark.anyio

IDS = [f"{i:032x}" for i in range(1, 26)]


async def test_all_confirmed_and_settled(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS)
    api = ScriptedApi()
    settings = make_settings(redis_server.url, prefix)
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    sent = [n for call in api.calls for n in call]
    assert sorted(sent) == sorted(IDS)
    assert all(len(call) <= settings.batch_size for call in api.calls)
    assert worker.totals.confirmed == len(IDS)
    assert await redis.xlen(keys.dead) == 0
    assert await redis.xlen(keys.reconcile) == 0
    pending = await redis.xpending(keys.tasks, keys.group)
    assert pending["pending"] == 0


async def test_overcount_is_recorded_and_settled(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:5])
    api = ScriptedApi(lambda ids, n: AckResult(len(ids) + 2, f"req-{n}"))
    async with running_worker(make_settings(redis_server.url, prefix), redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    records = await stream_fields(redis, keys.reconcile)
    assert [r["kind"] for r in records] == ["overcount"]
    assert records[0]["overcount"] == "2"
    assert worker.totals.confirmed == 5


async def test_permanent_error_splits_until_the_bad_number(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    bad = IDS[3]
    await enqueue(redis, keys, IDS[:8], task_no="T1")

    def behave(ids: Sequence[str], n: int) -> AckResult:
        if bad in ids:
            raise PermanentApiError("InvalidParameter", "bad number", request_id=f"req-{n}")
        return AckResult(len(ids), f"req-{n}")

    api = ScriptedApi(behave)
    settings = make_settings(redis_server.url, prefix, linger_ms=200)
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    dead = await stream_fields(redis, keys.dead)
    assert [(d["id"], d["reason"], d["task_no"]) for d in dead] == [(bad, "rejected", "T1")]
    assert "InvalidParameter" in dead[0]["error"]
    assert worker.totals.confirmed == 7


async def test_a_batch_failing_while_the_api_answers_others_is_dead_after_its_budget(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    poison = IDS[0]
    await enqueue(redis, keys, [poison])

    def behave(ids: Sequence[str], n: int) -> AckResult:
        if poison in ids:
            raise ServerError("InternalError", "boom", http_status=500)
        return AckResult(len(ids), f"req-{n}")

    api = ScriptedApi(behave)
    settings = make_settings(redis_server.url, prefix, batch_size=1, linger_ms=0)
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: _sent(api, poison), what="the poison batch sent")
        # Answers to others after its first failure: the API is there, the batch is at fault.
        await enqueue(redis, keys, IDS[1:4])
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    dead = await stream_fields(redis, keys.dead)
    assert [(d["id"], d["reason"]) for d in dead] == [(poison, "retries_exhausted")]
    assert int(dead[0]["attempts"]) >= 3
    assert worker.totals.confirmed == 3


async def _sent(api: ScriptedApi, number: str) -> bool:
    return any(number in call for call in api.calls)


async def test_a_short_batch_without_verification_is_recorded_whole_and_not_resent(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:4])
    api = ScriptedApi(lambda ids, n: AckResult(1, f"req-{n}"))  # it cannot poll: unverified
    settings = make_settings(redis_server.url, prefix, linger_ms=200)
    async with running_worker(settings, redis, api) as worker:
        await wait_for(lambda: drained(redis, prefix), what="backlog settled")
    assert len(api.calls) == 1  # a resend would carry the confirmed number again, for nothing
    [record] = await stream_fields(redis, keys.reconcile)
    assert (record["submitted"], record["confirmed"], record["shortfall"]) == ("4", "1", "3")
    assert (record["verified"], record["request_ids"]) == ("false", '["req-1"]')
    assert worker.totals.shortfall == 3


async def test_fatal_answers_keep_items_and_probe_until_fixed(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await enqueue(redis, keys, IDS[:20])
    fixed = False
    reloads: list[int] = []

    def behave(ids: Sequence[str], n: int) -> AckResult:
        if not fixed:
            raise AuthError("InvalidAccessKeyId.NotFound", "no such key", request_id=f"r{n}")
        return AckResult(len(ids), f"req-{n}")

    api = ScriptedApi(behave)
    settings = make_settings(redis_server.url, prefix, concurrency=4, batch_size=5)
    async with running_worker(
        settings, redis, api, reload_credentials=lambda: reloads.append(1)
    ) as worker:

        async def probed_thrice() -> bool:
            return len(reloads) >= 3

        await wait_for(probed_thrice, what="three credential probes")
        # While the gate is closed only the prober sends: one request per probe, plus the
        # first request of each sender that was already under way.
        assert len(api.calls) <= len(reloads) + settings.concurrency
        assert await redis.xlen(keys.dead) == 0
        assert await redis.xlen(keys.tasks) == 20
        fixed = True
        await wait_for(lambda: drained(redis, prefix), what="backlog settled after the fix")
    assert worker.totals.confirmed == 20
    assert await redis.xlen(keys.dead) == 0
