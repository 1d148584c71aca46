"""Entries deleted or trimmed while pending (XAUTOCLAIM's third reply element) are logged and
counted when claimed, never dropped silently."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import RedisServer, free_port
from tests.harness import ScriptedApi, make_settings, running_worker, wait_for
from tests.test_watch_http import scrape, value
from worker.store.keys import Keys
from worker.store.settle import Settler
from worker.store.source import VANISHED_SHOWN, SourceConfig, StreamSource, ensure_group
from worker.totals import Totals

pytestmark = pytest.mark.anyio


async def pending_on_a_dead_consumer(redis: Redis, keys: Keys, count: int) -> list[bytes]:
    """``count`` entries read by a consumer that then died: pending, never settled."""
    await ensure_group(redis, keys)
    ids = [await redis.xadd(keys.tasks, {"id": f"n{i}"}) for i in range(count)]
    await redis.xreadgroup(keys.group, "gone-1", {keys.tasks: ">"})
    return ids


def source_for(redis: Redis, keys: Keys, totals: Totals) -> StreamSource:
    settler = Settler(redis, keys, dedupe_ttl_s=0, consumer="c2")
    config = SourceConfig("c2", claim_idle_ms=0, max_attempts=5)
    return StreamSource(redis, keys, settler, config, totals=totals)


async def test_a_claim_logs_and_counts_entries_deleted_while_pending(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    ids = await pending_on_a_dead_consumer(redis, keys, VANISHED_SHOWN + 5)
    kept = ids[-1]
    await redis.xdel(keys.tasks, *ids[:-1])
    totals = Totals()
    with capture_logs() as logs:
        claimed = await source_for(redis, keys, totals).claim_stale(100)
    assert [e.entry_id for e in claimed] == [kept]
    [event] = [e for e in logs if e["event"] == "item.vanished"]
    assert event["count"] == len(ids) - 1
    assert event["ids"] == [i.decode() for i in ids[:VANISHED_SHOWN]]  # a bounded list
    assert event["stream"] == keys.tasks
    assert event["log_level"] == "warning"
    assert totals.vanished == len(ids) - 1
    assert totals.as_dict()["vanished"] == len(ids) - 1


async def test_a_two_element_reply_of_an_older_redis_is_handled(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    ids = await pending_on_a_dead_consumer(redis, keys, 2)

    parse = redis.response_callbacks["XAUTOCLAIM"]

    def redis_6_2(response: Any, **options: Any) -> Any:
        reply: Any = parse(response, **options)
        return reply[:2]  # Redis 6.2 has no third element

    redis.set_response_callback("XAUTOCLAIM", redis_6_2)
    totals = Totals()
    with capture_logs() as logs:
        claimed = await source_for(redis, keys, totals).claim_stale(100)
    assert [e.entry_id for e in claimed] == ids
    assert not [e for e in logs if e["event"] == "item.vanished"]
    assert totals.vanished == 0


async def test_a_running_worker_counts_vanished_entries_in_its_metrics(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    ids = await pending_on_a_dead_consumer(redis, keys, 3)
    await redis.xdel(keys.tasks, ids[0], ids[2])
    port = free_port()
    settings = make_settings(redis_server.url, prefix, http_port=port)
    api = ScriptedApi()
    async with running_worker(settings, redis, api) as worker:

        async def claimed() -> bool:
            return worker.totals.vanished == 2 and worker.totals.confirmed == 1

        await wait_for(claimed, what="the dead consumer's entries claimed")
        samples = await scrape(port)
    assert value(samples, "ackworker_vanished_items_total") == 2
    assert api.calls == [["n1"]]
