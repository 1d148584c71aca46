"""Verified reconciliation against the real stand-in: the Verifier's queries, then a worker
whose batches come up short because the stand-in drops confirmations (``drop_rate``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import RedisServer
from tests.harness import (
    FAST_POLICY,
    TEST_CREDENTIALS,
    acks,
    drained,
    make_settings,
    polls,
    running_worker,
    stream_fields,
    wait_for,
)
from worker.api.client import AckResult, DomainClient, PollPage
from worker.commands.reconcile import list_reconcile, record_json
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.entries import Batch, Entry
from worker.errors import ServerError
from worker.pipeline.lanes import build_verifier
from worker.pipeline.verify import Check, Verifier, plan
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.store.limiter import LimiterReply, RateLimiter, Slot

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=11) as server:
        yield server


@pytest.fixture
async def client(api: MockApi) -> AsyncIterator[DomainClient]:
    async with DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as c:
        yield c


class CountingLimiter(RateLimiter):
    """The real shared limiter, counting what the verifier asks of it."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        super().__init__(redis, Keys(prefix).limiter, 1000.0)
        self.acquired = 0
        self.throttles = 0

    async def acquire(self, *, probe: bool = True) -> Slot:
        self.acquired += 1
        return await super().acquire(probe=probe)

    async def throttled(self, retry_after_s: float | None) -> LimiterReply:
        self.throttles += 1
        return await super().throttled(retry_after_s)


def batch_of(
    numbers: Sequence[str], *, task_no: str | None = None, domain: str | None = None
) -> Batch:
    batch = Batch("b-1")
    for i, number in enumerate(numbers):
        batch.add(Entry(f"1-{i}".encode(), number, task_no, domain))
    return batch


class Checker:
    """One batch checked on its own: its filtered queries, read within ``max_pages``."""

    def __init__(self, verifier: Verifier, max_pages: int) -> None:
        self._verifier = verifier
        self._max_pages = max_pages

    async def check(self, batch: Batch, limiter: RateLimiter) -> Check:
        found = await self._verifier.read(plan(batch.groups), limiter, self._max_pages)
        return found.check(batch.numbers, 1)


def verifier(client: DomainClient, *, max_pages: int = 5, page_size: int = 1000) -> Checker:
    return Checker(Verifier(client, page_size=page_size, policy=FAST_POLICY), max_pages)


# --- the Verifier ------------------------------------------------------------------------


async def test_one_task_no_query_per_task_places_every_number(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(300)  # others' results, which a filtered query never pages through
    t1 = api.state.seed_random(6, task_no="T-1")
    t2 = api.state.seed_random(4, task_no="T-2")
    api.state.acknowledge([t1[0], t1[3], t2[1]])
    stranger = f"{7:032x}"  # carries T-1 but the API does not know it
    batch = batch_of([*t1, stranger], task_no="T-1")
    for number in t2:
        batch.add(Entry(b"2-" + number.encode(), number, "T-2", "example.org"))
    limiter = CountingLimiter(redis, prefix)
    check = await verifier(client, page_size=5).check(batch, limiter)
    assert check.error is None
    assert check.listed == [t1[1], t1[2], t1[4], t1[5], t2[0], t2[2], t2[3]]
    assert check.not_listed == [t1[0], t1[3], stranger, t2[1]]
    assert check.unknown == []
    # T-1 lists 4 results (one page of 5), T-2 lists 3: one page each, each behind the limiter.
    assert (check.pages, polls(api), limiter.acquired) == (2, 2, 2)


async def test_domain_query_for_numbers_without_a_task(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(50)
    mine = api.state.seed_random(5, domain="shop.example")
    api.state.acknowledge(mine[:2])
    check = await verifier(client).check(
        batch_of(mine, domain="shop.example"), CountingLimiter(redis, prefix)
    )
    assert (check.listed, check.not_listed, check.unknown) == (mine[2:], mine[:2], [])
    assert check.pages == 1


async def test_a_listing_on_one_page_proves_what_it_does_not_list(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    seeded = api.state.seed_random(8)
    api.state.acknowledge(seeded[:3])
    batch = batch_of([seeded[0], seeded[1], seeded[7]])
    check = await verifier(client, page_size=10).check(batch, CountingLimiter(redis, prefix))
    assert (check.listed, check.not_listed, check.unknown) == ([seeded[7]], seeded[:2], [])
    assert check.pages == 1


async def test_a_listing_longer_than_a_page_is_read_on_its_first_page_only(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    seeded = api.state.seed_random(28)
    api.state.acknowledge(seeded[:3])
    batch = batch_of([seeded[0], seeded[3], seeded[27]])  # listed on page 1 and on page 3
    check = await verifier(client, max_pages=5, page_size=10).check(
        batch, CountingLimiter(redis, prefix)
    )
    # One page of three: it finds what it shows, and proves nothing missing; later pages
    # could not prove anything either (they are other moments), so they are not read.
    assert (check.listed, check.not_listed, check.unknown) == (
        [seeded[3]],
        [],
        [seeded[0], seeded[27]],
    )
    assert check.pages == 1


async def test_a_scan_stops_once_every_number_is_found(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    seeded = api.state.seed_random(100)
    check = await verifier(client, page_size=10).check(
        batch_of(seeded[:3]), CountingLimiter(redis, prefix)
    )
    assert (check.listed, check.pages) == (seeded[:3], 1)


async def test_queries_beyond_the_page_budget_leave_their_numbers_unread(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    one = api.state.seed_random(2, task_no="T-1")
    two = api.state.seed_random(2, task_no="T-2")
    api.state.acknowledge(one[:1])
    batch = batch_of(one, task_no="T-1")
    for number in two:
        batch.add(Entry(b"2-" + number.encode(), number, "T-2"))
    limiter = CountingLimiter(redis, prefix)
    found = await Verifier(client, page_size=10, policy=FAST_POLICY).read(
        plan(batch.groups), limiter, 1
    )
    check = found.check(batch.numbers, 1)
    # One page: T-1's, whole, so proof; T-2 got none, so its numbers are neither.
    assert (check.listed, check.not_listed, check.unknown) == (one[1:], one[:1], two)
    assert (found.unread, check.pages, polls(api)) == (set(two), 1, 1)
    assert not check.failed


class ShiftingPoller:
    """After page 1 is served, one result on it is acknowledged and a new one joins at the
    end, as another worker and the service would: the total stays the same, and every later
    result moves one place towards page 1."""

    def __init__(self, client: DomainClient, api: MockApi, remove: str) -> None:
        self._client = client
        self._api = api
        self._remove: str | None = remove
        self.pages: list[int] = []

    async def poll_task_result(
        self,
        page_num: int,
        page_size: int,
        *,
        task_no: str | None = None,
        domain_name: str | None = None,
        task_result_status: int | None = None,
    ) -> PollPage:
        self.pages.append(page_num)
        page = await self._client.poll_task_result(page_num, page_size)
        if self._remove is not None:
            self._api.state.acknowledge([self._remove])
            self._api.state.seed_random(1)
            self._remove = None
        return page


async def test_a_listing_that_moves_between_pages_proves_nothing_missing(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    seeded = api.state.seed_random(15)
    target = seeded[10]  # first on page 2; after the shift, last on page 1
    poller = ShiftingPoller(client, api, remove=seeded[0])
    checker = Checker(Verifier(poller, page_size=10, policy=FAST_POLICY), max_pages=5)
    check = await checker.check(batch_of([target]), CountingLimiter(redis, prefix))
    # Page 1 only: page 2, read a moment later, could not prove it anyway (the shift moves
    # the target onto page 1 after page 1 was read, with the total unchanged).
    assert poller.pages == [1]
    assert (check.listed, check.not_listed, check.unknown) == ([], [], [target])
    assert target in api.state.pending_ids()


async def test_api_errors_fail_the_check_after_retries(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    seeded = api.state.seed_random(5)
    api.faults.update({"error_rate": 1.0})
    limiter = CountingLimiter(redis, prefix)
    check = await verifier(client).check(batch_of(seeded), limiter)
    assert check.failed
    assert check.error is not None
    assert check.error.startswith(("ServiceUnavailable", "Internal"))
    assert check.unknown == seeded
    assert polls(api) == FAST_POLICY.max_attempts == limiter.acquired

    api.faults.update({"error_rate": 0.0, "throttle_rate": 1.0})
    limiter = CountingLimiter(redis, prefix)
    check = await verifier(client).check(batch_of(seeded), limiter)
    assert check.failed
    assert "Throttling" in str(check.error)
    assert limiter.throttles == FAST_POLICY.max_attempts


async def test_no_verifier_when_off_or_when_the_client_cannot_poll(client: DomainClient) -> None:
    settings = make_settings("redis://127.0.0.1:1/0", "p")
    assert isinstance(build_verifier(settings, client, policy=FAST_POLICY), Verifier)
    off = make_settings("redis://127.0.0.1:1/0", "p", verify_shortfall=False)
    assert build_verifier(off, client, policy=FAST_POLICY) is None
    assert build_verifier(settings, object(), policy=FAST_POLICY) is None


# --- a worker against dropped confirmations ----------------------------------------------


async def seed_tasks(api: MockApi, redis: Redis, prefix: str, tasks: int, each: int) -> list[str]:
    """``tasks`` tasks of ``each`` results at the stand-in, enqueued with their task_no."""
    numbers: list[str] = []
    for t in range(tasks):
        ids = api.state.seed_random(each, task_no=f"T-{t}")
        await enqueue(redis, Keys(prefix), ids, task_no=f"T-{t}")
        numbers += ids
    return numbers


async def records(redis: Redis, prefix: str) -> list[dict[str, str]]:
    return await stream_fields(redis, Keys(prefix).reconcile)


async def test_verification_confirms_every_number_the_stand_in_dropped(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    numbers = await seed_tasks(api, redis, prefix, tasks=4, each=50)
    api.faults.update({"drop_rate": 0.3})
    settings = make_settings(redis_server.url, prefix, endpoint=api.url, batch_size=20)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings, redis, client) as worker:
            await wait_for(lambda: drained(redis, prefix), timeout_s=60, what="backlog settled")
    assert api.state.pending_count == 0
    assert set(numbers) <= set(api.state.confirmed_ids())
    assert int(api.stats()["dropped_confirmations"]) > 0  # type: ignore[call-overload]
    found = await records(redis, prefix)
    assert found, "a 30% drop rate left no batch short"
    assert all(r["verified"] == "true" for r in found)
    assert all(json.loads(r["ids"]) == [] and r["shortfall"] == "0" for r in found)
    assert await redis.xlen(Keys(prefix).dead) == 0
    assert (worker.totals.confirmed, worker.totals.shortfall) == (200, 0)
    verified = [e for e in logs if e["event"] == "reconcile.verified"]
    assert verified
    assert all(e["unknown"] == 0 for e in verified)
    assert sum(e["listed"] for e in verified) > 0
    # Exactly one batch.settled per batch, re-sent remainders included.
    settled = [e["batch_id"] for e in logs if e["event"] == "batch.settled"]
    assert len(settled) == len(set(settled)) == worker.totals.batches

    # Verified numbers are remembered: duplicates settle without a request.
    api.faults.update({"drop_rate": 0.0})
    before = acks(api)
    await enqueue(redis, Keys(prefix), numbers)
    async with running_worker(settings, redis, client) as again:
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="duplicates settled")
    assert again.totals.duplicates == len(numbers)
    assert acks(api) == before


async def test_without_verification_the_whole_batch_is_recorded(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    numbers = await seed_tasks(api, redis, prefix, tasks=2, each=20)
    api.faults.update({"drop_rate": 0.5})
    settings = make_settings(
        redis_server.url, prefix, endpoint=api.url, batch_size=20, verify_shortfall=False
    )
    async with running_worker(settings, redis, client) as worker:
        await wait_for(lambda: drained(redis, prefix), timeout_s=60, what="backlog settled")
    assert polls(api) == 0
    left = set(api.state.pending_ids())
    assert left, "with a 50% drop rate some number should have been dropped twice"
    found = await records(redis, prefix)
    assert found
    assert all(r["verified"] == "false" for r in found)
    listed = {n for r in found for n in json.loads(r["ids"])}
    assert left <= listed
    assert all(len(json.loads(r["ids"])) == int(r["submitted"]) for r in found)
    assert worker.totals.shortfall == len(left)
    assert set(numbers) - left <= set(api.state.confirmed_ids())


async def test_numbers_still_listed_after_every_round_are_dead_lettered_unconfirmed(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    numbers = await seed_tasks(api, redis, prefix, tasks=1, each=4)
    api.faults.update({"drop_rate": 1.0})
    settings = make_settings(redis_server.url, prefix, endpoint=api.url, linger_ms=200)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings, redis, client) as worker:
            await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="backlog settled")
    rounds = settings.max_attempts
    # No blind resend: the first request, then one per round for the numbers still listed;
    # one page per check: after the first answer and after each round.
    assert (acks(api), polls(api)) == (1 + rounds, 1 + rounds)
    dead = await stream_fields(redis, Keys(prefix).dead)
    assert sorted(d["id"] for d in dead) == sorted(numbers)
    assert {d["reason"] for d in dead} == {"unconfirmed"}
    assert all(d["task_no"] == "T-0" for d in dead)
    assert worker.totals.dead["unconfirmed"] == 4
    [record] = await records(redis, prefix)
    # Their outcome is the dead letters: the record lists them apart, not as a shortfall.
    assert record["verified"] == "true"
    assert (json.loads(record["unconfirmed"]), json.loads(record["ids"])) == (numbers, [])
    assert (record["rounds"], record["confirmed"], record["shortfall"]) == (str(rounds), "0", "0")
    assert [e["round"] for e in logs if e["event"] == "reconcile.verified"] == [0, 1, 2, 3]

    # ``ackworker reconcile list`` shows the verified fields.
    rows, _ = await list_reconcile(redis, Keys(prefix), 10)
    shown = record_json(rows[0])
    assert shown["verified"] is True
    assert shown["unconfirmed"] == numbers
    assert shown["unknown"] == []
    assert (shown["rounds"], shown["elsewhere"]) == (rounds, 0)


async def test_numbers_the_api_does_not_know_are_named_once_and_remembered(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    known = api.state.seed_random(6)
    strangers = [f"{i:032x}" for i in range(1, 3)]
    await enqueue(redis, Keys(prefix), known + strangers)
    settings = make_settings(redis_server.url, prefix, endpoint=api.url, linger_ms=200)
    async with running_worker(settings, redis, client) as worker:
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="backlog settled")
    [record] = await records(redis, prefix)
    # Not listed: confirmed by this answer or unknown to the API, which cannot say which two
    # of the eight; all eight are named, and every one is remembered.
    assert record["verified"] == "true"
    assert sorted(json.loads(record["ids"])) == sorted(known + strangers)
    assert (record["elsewhere"], record["unconfirmed"], record["unknown"]) == ("2", "[]", "[]")
    assert (worker.totals.confirmed, worker.totals.shortfall) == (6, 2)
    assert (acks(api), polls(api)) == (1, 1)  # nothing sent again blind

    # Late duplicates of the strangers cost no request and no second record.
    await enqueue(redis, Keys(prefix), strangers)
    async with running_worker(settings, redis, client) as again:
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="strangers settled")
    assert (acks(api), polls(api)) == (1, 1)
    assert (again.totals.duplicates, again.totals.shortfall) == (2, 0)
    assert len(await records(redis, prefix)) == 1


class PollBreaks:
    """Acknowledges through the stand-in; every poll fails."""

    def __init__(self, client: DomainClient) -> None:
        self._client = client

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        return await self._client.acknowledge(ids)

    async def poll_task_result(self, page_num: int, page_size: int, **filters: Any) -> PollPage:
        raise ServerError("InternalError", "poll is down", http_status=500)


async def test_a_failed_verification_falls_back_to_the_whole_batch(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    known = api.state.seed_random(3)
    stranger = f"{9:032x}"
    await enqueue(redis, Keys(prefix), [*known, stranger])
    settings = make_settings(redis_server.url, prefix, endpoint=api.url, linger_ms=200)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings, redis, PollBreaks(client)) as worker:
            await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="backlog settled")
    [record] = await records(redis, prefix)
    assert record["verified"] == "false"
    assert json.loads(record["ids"]) == [*known, stranger]
    assert "unconfirmed" not in record
    assert worker.totals.shortfall == 1
    failed = [e for e in logs if e["event"] == "reconcile.verify_failed"]
    assert len(failed) == 1
    assert "InternalError" in failed[0]["error"]


def test_a_check_that_learnt_nothing_failed() -> None:
    assert Check().failed
    assert Check(unknown=["a"]).failed
    assert not Check(not_listed=["a"], unknown=["b"]).failed
    assert Check(listed=["a"], error="boom").failed


class ResendBlinks:
    """The stand-in, except that the second acknowledgement meets Redis going away."""

    def __init__(self, client: DomainClient) -> None:
        self._client = client
        self.acks = 0

    async def acknowledge(self, ids: Sequence[str]) -> AckResult:
        self.acks += 1
        if self.acks == 2:
            raise RedisConnectionError("Connection closed by server.")
        return await self._client.acknowledge(ids)

    async def poll_task_result(self, page_num: int, page_size: int, **filters: Any) -> PollPage:
        return await self._client.poll_task_result(page_num, page_size, **filters)


async def test_a_redis_failure_in_a_verified_resend_keeps_what_was_proven(
    redis_server: RedisServer, redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    known = api.state.seed_random(4)
    await enqueue(redis, Keys(prefix), known)
    api.faults.update({"drop_rate": 1.0})  # the first request confirms nothing
    blinks = ResendBlinks(client)
    settings = make_settings(redis_server.url, prefix, endpoint=api.url, linger_ms=100)
    async with running_worker(settings, redis, blinks) as worker:
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="backlog settled")
    # Settled once, not abandoned to be claimed and sent again: the check proved all four
    # still listed, the resend's fate is unknown, so all four are named unplaced.
    assert blinks.acks == 2
    [record] = await records(redis, prefix)
    assert record["verified"] == "true"
    assert sorted(json.loads(record["unknown"])) == sorted(known)
    assert (worker.totals.confirmed, worker.totals.shortfall) == (0, 4)
    assert await redis.xlen(Keys(prefix).dead) == 0
