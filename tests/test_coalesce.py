"""The VerifyHub: shortfalls of many batches checked by the fewest polls, on a clock the test
moves, against the real stand-in and the real shared limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from redis.asyncio import Redis

from tests.harness import FAST_POLICY, TEST_CREDENTIALS, polls, wait_for
from worker.api.client import AckResult, DomainClient, PollPage
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.entries import Batch, Entry, Holdings
from worker.errors import ApiError, AuthError, PermanentApiError
from worker.pipeline.coalesce import HubConfig, VerifyHub
from worker.pipeline.report import BatchReport
from worker.pipeline.resend import Answer, Resent, Send
from worker.pipeline.verify import Check, Verifier
from worker.store.keys import Keys
from worker.store.limiter import RateLimiter
from worker.store.listing import SharedListing

pytestmark = pytest.mark.anyio

CONFIG = HubConfig(linger_s=0.5, max_wait_s=10.0, max_numbers=1000, max_pages=20)


class ManualClock:
    """Time moves only when the test says so; ``sleeping`` counts who waits for it."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, UTC)

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        event = anyio.Event()
        entry = (self.now_s + seconds, event)
        self._sleepers.append(entry)
        try:
            await event.wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        self.now_s += seconds
        for entry in list(self._sleepers):
            due, event = entry
            if due <= self.now_s:
                # Gone at once, so a later wait for a sleeper waits for a new one.
                self._sleepers.remove(entry)
                event.set()


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=3) as server:
        yield server


@pytest.fixture
async def client(api: MockApi) -> AsyncIterator[DomainClient]:
    async with DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as c:
        yield c


def batch_of(batch_id: str, numbers: Sequence[str], task_no: str | None = None) -> Batch:
    batch = Batch(batch_id)
    for i, number in enumerate(numbers):
        batch.add(Entry(f"{batch_id}-{i}".encode(), number, task_no))
    return batch


class Rig:
    """A hub running in a task group, and the checks its callers got back."""

    def __init__(self, hub: VerifyHub, clock: ManualClock, tg: TaskGroup) -> None:
        self.hub, self.clock, self._tg = hub, clock, tg
        self.checks: dict[str, Check] = {}
        self.answers: dict[str, Answer] = {}

    def submit(self, batch: Batch, send: Send | None = None, *, shield: bool = False) -> None:
        async def ask() -> None:
            # Shielded, the answer is kept even when the hub fails and the group is cancelled.
            with anyio.CancelScope(shield=shield):
                answer = await self.hub.check(batch, send)
            self.checks[batch.batch_id] = answer.check
            self.answers[batch.batch_id] = answer

        self._tg.start_soon(ask)

    async def until(self, what: str, predicate: Callable[[], bool]) -> None:
        async def holds() -> bool:
            return predicate()

        await wait_for(holds, timeout_s=10, what=what)

    async def asleep(self) -> None:
        """Wait until the hub sleeps on the clock (gathering)."""
        await self.until("the hub to sleep", lambda: self.clock.sleeping >= 1)

    async def past_the_wait(self, config: HubConfig, pages: int, checks: int) -> None:
        """Gathered shortfalls over a listing of ``pages`` pages: after the linger one page
        learns its size, the round waits for a cheaper listing, and once the longest wait
        is over it goes; wait for ``checks`` answers."""
        await self.asleep()
        self.clock.advance(config.linger_s)
        await self.until("the size is learnt", lambda: self.hub.listing_pages() == pages)
        await self.asleep()
        self.clock.advance(config.max_wait_s)
        await self.until(f"{checks} checks", lambda: len(self.checks) == checks)


async def with_hub(
    redis: Redis,
    prefix: str,
    poller: Any,
    body: Callable[[Rig], Awaitable[None]],
    *,
    config: HubConfig = CONFIG,
    page_size: int = 1000,
    stopping: anyio.Event | None = None,
) -> VerifyHub:
    clock = ManualClock()
    counted: list[int] = []
    verifier = Verifier(
        poller,
        page_size=page_size,
        policy=FAST_POLICY,
        clock=clock,
        counted=lambda: counted.append(1),
    )
    limiter = RateLimiter(redis, Keys(prefix).limiter, 1000.0)
    hub = VerifyHub(verifier, limiter, config, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.run, stopping)
        await body(Rig(hub, clock, tg))
        tg.cancel_scope.cancel()
    return hub


async def test_shortfalls_gathered_within_the_linger_share_one_page_of_the_listing(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    tasks = [api.state.seed_random(5, task_no=f"T-{t}") for t in range(3)]
    for numbers in tasks:
        api.state.acknowledge(numbers[:3])  # the rest is still listed
    stranger = f"{1:032x}"
    found: dict[str, Check] = {}

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("b0", [*tasks[0], stranger], "T-0"))
        await rig.asleep()
        rig.clock.advance(0.2)
        rig.submit(batch_of("b1", tasks[1], "T-1"))
        rig.submit(batch_of("b2", tasks[2], "T-2"))
        await rig.asleep()
        assert polls(api) == 0  # still gathering
        rig.clock.advance(CONFIG.linger_s - 0.2)
        await rig.until("every check", lambda: len(rig.checks) == 3)
        found.update(rig.checks)

    await with_hub(redis, prefix, client, body)
    # Three tasks would be three filtered queries; the listing's size is not known yet, so one
    # page of it is read, and it holds everything: one poll checks all three batches.
    assert polls(api) == 1
    assert found["b0"].not_listed == [*tasks[0][:3], stranger]
    for t in range(3):
        assert found[f"b{t}"].listed == tasks[t][3:]
        assert (found[f"b{t}"].pages, found[f"b{t}"].batches) == (1, 3)


async def test_one_task_is_one_filtered_query_without_learning_the_listing(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(2500)  # a large listing of others' results
    numbers = api.state.seed_random(4, task_no="T-9")
    api.state.acknowledge(numbers[:2])
    found: dict[str, Check] = {}

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("a", numbers[:2], "T-9"))
        rig.submit(batch_of("b", numbers[2:], "T-9"))
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("both checks", lambda: len(rig.checks) == 2)
        found.update(rig.checks)

    await with_hub(redis, prefix, client, body)
    assert polls(api) == 1
    assert (found["a"].not_listed, found["a"].listed) == (numbers[:2], [])
    assert (found["b"].listed, found["b"].not_listed) == (numbers[2:], [])
    assert found["a"].batches == found["b"].batches == 2


async def test_a_large_listing_waits_for_confirmations_to_shrink_it(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    others = api.state.seed_random(2500)
    tasks = [api.state.seed_random(3, task_no=f"T-{t}") for t in range(4)]
    found: dict[str, Check] = {}

    async def body(rig: Rig) -> None:
        for t, numbers in enumerate(tasks):
            rig.submit(batch_of(f"b{t}", numbers, f"T-{t}"))
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        # One page to learn the size: 2512 listed, three pages, not one: keep gathering.
        await rig.until("the size is learnt", lambda: rig.hub.listing_pages() == 3)
        await rig.asleep()
        assert (polls(api), rig.checks) == (1, {})
        rig.clock.advance(CONFIG.linger_s)
        await rig.asleep()
        assert polls(api) == 1  # still three pages against four filtered queries: wait
        # This process confirms most of the backlog meanwhile: one page checks everything.
        api.state.acknowledge(others)
        rig.hub.note_confirmed(len(others))
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("every check", lambda: len(rig.checks) == 4)
        found.update(rig.checks)

    await with_hub(redis, prefix, client, body)
    assert polls(api) == 2
    assert all(found[f"b{t}"].listed == tasks[t] for t in range(4))


async def test_the_longest_wait_is_bounded_then_the_cheaper_plan_is_read(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(5000)
    tasks = [api.state.seed_random(2, task_no=f"T-{t}") for t in range(3)]

    async def body(rig: Rig) -> None:
        for t, numbers in enumerate(tasks):
            rig.submit(batch_of(f"b{t}", numbers, f"T-{t}"))
        await rig.past_the_wait(CONFIG, pages=6, checks=3)

    await with_hub(redis, prefix, client, body)
    # The probe, then three filtered queries: cheaper than six pages of the listing.
    assert polls(api) == 1 + 3


async def test_enough_numbers_or_a_drain_go_at_once(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    numbers = api.state.seed_random(6, task_no="T-1")
    small = HubConfig(linger_s=5.0, max_wait_s=60.0, max_numbers=4, max_pages=5)

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("a", numbers[:3], "T-1"))
        await rig.asleep()
        rig.submit(batch_of("b", numbers[3:], "T-1"))  # six gathered, four allowed
        await rig.until("both checks", lambda: len(rig.checks) == 2)

    await with_hub(redis, prefix, client, body, config=small)
    assert polls(api) == 1

    stopping = anyio.Event()

    async def drain(rig: Rig) -> None:
        rig.submit(batch_of("c", numbers[:2], "T-1"))
        await rig.asleep()
        stopping.set()
        await rig.until("the check", lambda: len(rig.checks) == 1)

    await with_hub(redis, prefix, client, drain, config=small, stopping=stopping)
    assert polls(api) == 2


class Refused:
    """Every poll is refused, as for an account without the permission."""

    def __init__(self) -> None:
        self.calls = 0

    async def poll_task_result(self, page_num: int, page_size: int, **filters: Any) -> PollPage:
        self.calls += 1
        raise AuthError("Forbidden.RAM", "not allowed to PollTaskResult", http_status=403)


async def test_a_poll_the_account_may_not_make_turns_verification_off_for_a_while(
    redis: Redis, prefix: str
) -> None:
    refused = Refused()

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("a", ["a" * 32], "T-1"))
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("the check", lambda: "a" in rig.checks)
        rig.submit(batch_of("b", ["b" * 32], "T-1"))  # answered at once, unchecked
        await rig.until("the second check", lambda: "b" in rig.checks)
        rig.clock.advance(CONFIG.max_wait_s)
        rig.submit(batch_of("c", ["c" * 32], "T-1"))  # after the pause: asked again
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("the third check", lambda: "c" in rig.checks)
        for name in "abc":
            assert rig.checks[name].failed
        assert "Forbidden.RAM" in str(rig.checks["b"].error)

    await with_hub(redis, prefix, refused, body)
    assert refused.calls == 2


class Held:
    """The stand-in, with each poll held until the test lets it go."""

    def __init__(self, client: DomainClient) -> None:
        self._client = client
        self.waiting = 0
        self.go = anyio.Event()

    async def poll_task_result(self, page_num: int, page_size: int, **filters: Any) -> PollPage:
        self.waiting += 1
        await self.go.wait()
        self.waiting -= 1
        return await self._client.poll_task_result(page_num, page_size, **filters)


async def test_a_shortfall_that_arrives_while_a_round_reads_waits_for_the_next(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    first = api.state.seed_random(3, task_no="T-1")
    late = api.state.seed_random(3, task_no="T-2")
    held = Held(client)
    found: dict[str, Check] = {}

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("first", first, "T-1"))
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("the round's poll", lambda: held.waiting == 1)
        # Its answer came after the page was asked for: that page cannot prove it.
        rig.submit(batch_of("late", late, "T-2"))
        held.go.set()
        await rig.until("the first check", lambda: "first" in rig.checks)
        assert "late" not in rig.checks
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("the late check", lambda: "late" in rig.checks)
        found.update(rig.checks)

    await with_hub(redis, prefix, held, body)
    assert found["first"].listed == first
    assert (found["late"].listed, found["late"].unknown) == (late, [])
    assert polls(api) == 2


async def test_the_numbers_a_round_finds_listed_are_re_sent_packed_into_full_requests(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    tasks = [api.state.seed_random(5, task_no=f"T-{t}") for t in range(3)]
    for numbers in tasks:
        api.state.acknowledge(numbers[:2])  # three of each still listed
    sent: list[list[str]] = []

    async def send(batch: Batch, report: BatchReport) -> AckResult:
        sent.append(batch.numbers)
        result = await client.acknowledge(batch.numbers)
        report.request_ids.append(result.request_id)
        report.attempts += 1
        return result

    packed = HubConfig(linger_s=0.5, max_wait_s=10.0, max_numbers=1000, batch_size=6)
    found: dict[str, Answer] = {}

    async def body(rig: Rig) -> None:
        for t, numbers in enumerate(tasks):
            rig.submit(batch_of(f"b{t}", numbers, f"T-{t}"), send)
        await rig.asleep()
        rig.clock.advance(packed.linger_s)
        await rig.until("every answer", lambda: len(rig.answers) == 3)
        found.update(rig.answers)

    await with_hub(redis, prefix, client, body, config=packed)
    # Nine listed numbers, six to a request, a batch's never split: two requests, not three.
    assert sorted(map(len, sent)) == [3, 6]
    assert api.state.pending_count == 0
    assert all(found[f"b{t}"].resent is Resent.CONFIRMED for t in range(3))
    assert found["b0"].request_ids == found["b1"].request_ids != found["b2"].request_ids


async def test_replicas_share_what_they_read_and_only_what_postdates_the_answers(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    numbers = api.state.seed_random(6, task_no="T-1")
    api.state.acknowledge(numbers[:2])
    keys = Keys(prefix)

    def replica(config: HubConfig = CONFIG) -> tuple[VerifyHub, ManualClock]:
        clock = ManualClock()
        verifier = Verifier(client, page_size=1000, policy=FAST_POLICY, clock=clock)
        limiter = RateLimiter(redis, keys.limiter, 1000.0)
        shared = SharedListing(redis, keys.listing_for("default"), ttl_ms=60_000)
        return VerifyHub(verifier, limiter, config, clock, shared), clock

    (a, a_clock), (b, b_clock) = replica(), replica()
    late, _ = replica(HubConfig(linger_s=0.0))
    got: dict[str, Check] = {}

    async def ask(hub: VerifyHub, name: str, batch: Batch) -> None:
        got[name] = (await hub.check(batch)).check

    async def holds(predicate: Callable[[], bool]) -> bool:
        return predicate()

    async with anyio.create_task_group() as tg:
        for hub in (a, b, late):
            tg.start_soon(hub.run, None)
        # Both replicas hold a shortfall of task T-1 when the first of them reads it.
        tg.start_soon(ask, a, "a", batch_of("a", numbers[:3], "T-1"))
        tg.start_soon(ask, b, "b", batch_of("b", numbers[3:], "T-1"))
        await wait_for(
            lambda: holds(lambda: a_clock.sleeping > 0 < b_clock.sleeping), what="gathering"
        )
        a_clock.advance(CONFIG.linger_s)
        await wait_for(lambda: holds(lambda: "a" in got), what="replica a's check")
        # Seconds on b's clock: its answer then reads as that old, so however slow this
        # machine is, a's reading (just taken) came after it.
        b_clock.advance(5.0)
        await wait_for(lambda: holds(lambda: "b" in got), what="replica b's check")
        assert polls(api) == 1  # b used a's reading of T-1
        # An answer that came after a's reading cannot be proven by it: asked for again.
        tg.start_soon(ask, late, "late", batch_of("late", numbers[:1], "T-1"))
        await wait_for(lambda: holds(lambda: "late" in got), what="the late check")
        assert polls(api) == 2
        tg.cancel_scope.cancel()
    assert (got["a"].not_listed, got["a"].listed) == (numbers[:2], numbers[2:3])
    assert (got["b"].listed, got["b"].pages) == (numbers[3:], 0)
    assert got["late"].not_listed == numbers[:1]


def test_parked_entries_take_no_room_up_to_the_park_limit() -> None:
    holdings = Holdings(capacity=4, park_limit=3)
    waiting = [Entry(f"1-{i}".encode(), f"{i:032x}") for i in range(4)]
    holdings.add(waiting)
    assert holdings.full
    holdings.park(waiting[:2])  # a short batch waits for its verification
    assert (holdings.free, len(holdings)) == (2, 4)
    more = [Entry(f"2-{i}".encode(), f"{i + 10:032x}") for i in range(2)]
    holdings.add(more)
    holdings.park(more)  # one more fits under the limit; the other takes room again
    assert (holdings.free, len(holdings)) == (1, 6)
    assert holdings.is_parked(more[0])
    assert not holdings.is_parked(more[1])
    holdings.discard(waiting[:2])  # settled: the limit has room again
    assert (holdings.free, len(holdings)) == (1, 4)
    assert not holdings.is_parked(waiting[0])


class Refuses:
    """Acknowledges through the stand-in, but refuses any request carrying ``bad``."""

    def __init__(self, client: DomainClient, bad: str) -> None:
        self._client = client
        self._bad = bad
        self.sent: list[list[str]] = []

    async def send(self, batch: Batch, report: BatchReport) -> AckResult | ApiError:
        self.sent.append(batch.numbers)
        report.attempts += 1
        if self._bad in batch.groups:
            return PermanentApiError("InvalidParameter", "refused", request_id="r-bad")
        return await self._client.acknowledge(batch.numbers)


async def test_a_pack_the_api_rejects_is_sent_again_batch_by_batch(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    guilty = api.state.seed_random(2, task_no="T-1")
    innocent = api.state.seed_random(2, task_no="T-2")
    refuses = Refuses(client, guilty[0])
    found: dict[str, Answer] = {}

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("guilty", guilty, "T-1"), refuses.send)
        rig.submit(batch_of("innocent", innocent, "T-2"), refuses.send)
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("both answers", lambda: len(rig.answers) == 2)
        found.update(rig.answers)

    await with_hub(redis, prefix, client, body)
    assert refuses.sent == [guilty + innocent, guilty, innocent]
    assert (found["guilty"].resent, found["innocent"].resent) == (Resent.FAILED, Resent.CONFIRMED)
    assert (found["guilty"].attempts, found["innocent"].attempts) == (2, 2)


async def test_a_number_without_task_or_domain_does_not_sink_the_others(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(2500)  # three pages of others' results
    tasked = api.state.seed_random(2, task_no="T-1")
    api.state.acknowledge(tasked[:1])
    taskless = api.state.seed_random(1)  # the newest result: on the listing's last page
    found: dict[str, Check] = {}

    async def body(rig: Rig) -> None:
        rig.submit(batch_of("tasked", tasked, "T-1"))
        rig.submit(batch_of("taskless", [*taskless, f"{5:032x}"]))
        await rig.past_the_wait(CONFIG, pages=3, checks=2)
        found.update(rig.checks)

    await with_hub(redis, prefix, client, body)
    # The task's query proves its numbers; the listing, three pages long, proves nothing and
    # its first page holds the oldest results only.
    assert (found["tasked"].not_listed, found["tasked"].listed) == (tasked[:1], tasked[1:])
    assert (found["taskless"].listed, found["taskless"].unknown) == ([], [*taskless, f"{5:032x}"])
    assert polls(api) == 1 + 1 + 1  # the probe, the task's page, the listing's first


async def test_more_tasks_than_a_round_may_read_go_oldest_first_and_none_is_left_unplaced(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(2500)  # the listing is three pages: filtered queries it is
    tasks = [api.state.seed_random(2, task_no=f"T-{t}") for t in range(5)]
    tight = HubConfig(linger_s=0.5, max_wait_s=10.0, max_numbers=1000, max_pages=2)
    order: list[str] = []

    async def body(rig: Rig) -> None:
        for t, numbers in enumerate(tasks):
            rig.submit(batch_of(f"b{t}", numbers, f"T-{t}"))
        await rig.past_the_wait(tight, pages=3, checks=5)
        order.extend(rig.checks)
        assert all(c.listed and not c.unknown for c in rig.checks.values())

    await with_hub(redis, prefix, client, body, config=tight)
    assert order == ["b0", "b1", "b2", "b3", "b4"]
    assert polls(api) == 1 + 5  # the probe, then a page per task, two tasks per round


async def test_a_batch_with_more_tasks_than_pages_is_served_and_the_next_waits_its_turn(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    api.state.seed_random(2500)  # three pages: filtered queries it is
    wide = [api.state.seed_random(1, task_no=f"T-{t}")[0] for t in range(3)]
    narrow = api.state.seed_random(1, task_no="T-9")
    tight = HubConfig(linger_s=0.5, max_wait_s=10.0, max_numbers=1000, max_pages=2)
    found: dict[str, Check] = {}

    async def body(rig: Rig) -> None:
        wide_batch = Batch("wide")
        for t, number in enumerate(wide):
            wide_batch.add(Entry(f"w-{t}".encode(), number, f"T-{t}"))
        rig.submit(wide_batch)
        rig.submit(batch_of("narrow", narrow, "T-9"))
        await rig.past_the_wait(tight, pages=3, checks=2)
        found.update(rig.checks)

    await with_hub(redis, prefix, client, body, config=tight)
    # Two pages for the oldest batch's three tasks: the third stays unplaced, but the round
    # serves it; the other batch's task got no page then, so it went in the next round.
    assert (found["wide"].listed, found["wide"].unknown) == (wide[:2], wide[2:])
    assert (found["narrow"].listed, found["narrow"].unknown) == (narrow, [])
    assert polls(api) == 1 + 2 + 1


async def test_a_re_send_cut_short_leaves_its_numbers_unplaced_not_dead(
    redis: Redis, prefix: str, api: MockApi, client: DomainClient
) -> None:
    numbers = api.state.seed_random(2, task_no="T-1")

    async def breaks(batch: Batch, report: BatchReport) -> AckResult:
        raise RuntimeError("something nobody foresaw")

    rigs: list[Rig] = []

    async def body(rig: Rig) -> None:
        rigs.append(rig)
        rig.submit(batch_of("b", numbers, "T-1"), breaks, shield=True)
        await rig.asleep()
        rig.clock.advance(CONFIG.linger_s)
        await rig.until("the answer", lambda: "b" in rig.answers)

    with pytest.raises(BaseExceptionGroup):  # the hub's own failure still surfaces
        await with_hub(redis, prefix, client, body)
    assert rigs[0].answers["b"].resent is Resent.LOST
