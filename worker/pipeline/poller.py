"""The bundled upstream poller (``ackworker poll``), from ``PollTaskResult`` to the task stream.

A cycle reads ``PollTaskResult`` pages 1, 2, ... (at most ``poll_max_pages`` of
``poll_page_size``, with the ``poll_*`` filters) and enqueues every detail it has not enqueued
before through :func:`worker.store.enqueue.enqueue` with ``only_new``: the memory is shared by
every poller replica and written in the same Lua call as the XADD. Acknowledged results leave
the service's list, so the list shifts under a poller that pages on; every cycle starts again
at page 1, and a result a shift moved past the page being read is found by the next cycle.

Every request first takes a slot of the account's shared limiter, the one the acknowledgement
workers of that account use. A throttling answer slows and pauses the whole fleet, and the
page is retried with bounded back-off (``RetryPolicy``). A fatal answer (credentials, clock,
endpoint), an answer that keeps failing or an unreachable Redis ends the cycle with
``poll.failed``; the next cycle comes after the probe back-off (at least ``poll_interval_s``),
with the credentials re-read, so a broken poller is loud and slow, never a tight loop.

The first SIGTERM or SIGINT lets the page in hand be enqueued, then stops; a second stops at
once. Either way nothing is half-written: each page is enqueued in one atomic call.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from worker.api.client import PollClient, PollPage, TaskDetail
from worker.clock import SYSTEM_CLOCK, Clock
from worker.config.accounts import Account
from worker.config.settings import Settings
from worker.entries import is_valid_id
from worker.errors import ApiError, FatalApiError, describe
from worker.lifecycle import TwoPhaseStop
from worker.logs import get_logger
from worker.retry import ApiRetry, RetryPolicy
from worker.store.connection import REDIS_ERRORS, RedisClient
from worker.store.enqueue import EnqueueMemory, Item, enqueue
from worker.store.keys import Keys
from worker.store.limiter import RateLimiter

log = get_logger("poller")

MEMORY_MIN_TTL_S = 3600
"""The memory's TTL is ``dedupe_ttl_s``, but never below an hour (also when that is 0)."""
_META_MAX = 256


def memory_ttl_s(settings: Settings) -> int:
    """Seconds the poller remembers an enqueued number (then it is offered again)."""
    return max(settings.dedupe_ttl_s, MEMORY_MIN_TTL_S)


@dataclass(slots=True)
class CycleReport:
    """What ``poll.cycle`` says about one cycle: ``found`` = ``enqueued`` + ``known`` +
    ``invalid``; ``error`` is the code that ended it early, if one did."""

    account: str
    started: float
    pages: int = 0
    found: int = 0
    enqueued: int = 0
    known: int = 0
    invalid: int = 0
    error: str | None = None

    def fields(self, now: float) -> dict[str, Any]:
        """The event's fields; ``duration_ms`` from the first request to the last enqueue."""
        return {
            "account": self.account,
            "pages": self.pages,
            "found": self.found,
            "enqueued": self.enqueued,
            "known": self.known,
            "invalid": self.invalid,
            "error": self.error,
            "duration_ms": round((now - self.started) * 1000.0, 1),
        }


@dataclass(slots=True)
class PollerParts:
    """What a poller talks to; tests build these to run one in-process.

    ``reload_credentials`` is called after a failed cycle and must not raise (see
    :func:`~worker.pipeline.clients.credential_reloader`)."""

    redis: RedisClient
    client: PollClient
    keys: Keys
    policy: RetryPolicy
    reload_credentials: Callable[[], None] | None = None
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random = field(default_factory=random.Random)


class Poller:
    """Polls one account. :meth:`run` loops; :meth:`cycle` is one pass from page 1."""

    def __init__(self, settings: Settings, account: Account, parts: PollerParts) -> None:
        self._s = settings
        self._account = account
        self._p = parts
        key = parts.keys.limiter_for(account.name)
        self._limiter = RateLimiter(parts.redis, key, account.rate_limit, parts.clock)
        prefix = parts.keys.polled_prefix(account.name)
        self._memory = EnqueueMemory(prefix, memory_ttl_s(settings))
        self._stop = TwoPhaseStop()
        self._pause: anyio.CancelScope | None = None
        self.failures = 0
        """Cycles failed in a row."""
        self.cycles = 0
        self.enqueued = 0

    def request_stop(self) -> None:
        """First call: finish the page in hand, then stop. Second call: stop at once."""
        if self._stop.request():
            log.info("poll.draining", account=self._account.name)
            if self._pause is not None:
                self._pause.cancel()
        else:
            log.warning("poll.stopping_now", account=self._account.name)

    async def run(
        self, *, once: bool = False, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> int:
        """Poll until stopped, or one cycle with ``once``; the exit code (1: that cycle failed)."""
        code = 0
        log.info("poll.started", **self._public_settings(once))
        task_status.started()
        with self._stop.hard:
            while not self._stop.is_stopping:
                report = await self.cycle()
                if once:
                    code = 0 if report.error is None else 1
                    break
                await self._sleep(self._next_delay_s(report))
                if report.error is not None and not self._stop.is_stopping:
                    self._reload()
        log.info(
            "poll.stopped", account=self._account.name, cycles=self.cycles, enqueued=self.enqueued
        )
        return code

    async def cycle(self) -> CycleReport:
        """One pass from page 1; logs one ``poll.cycle`` (and ``poll.failed`` if it failed),
        also when a second signal cancels it halfway."""
        clock = self._p.clock
        report = CycleReport(self._account.name, clock.monotonic())
        try:
            await self._pages(report)
        except ApiError as exc:
            self._failed(report, exc.code, exc.summary(), fatal=isinstance(exc, FatalApiError))
        except REDIS_ERRORS as exc:
            self._failed(report, "redis_unavailable", describe(exc))
        else:
            self.failures = 0
        finally:
            self.cycles += 1
            self.enqueued += report.enqueued
            log.info("poll.cycle", **report.fields(clock.monotonic()))
        return report

    async def _pages(self, report: CycleReport) -> None:
        for page_num in range(1, self._s.poll_max_pages + 1):
            page = await self._fetch(page_num)
            if page is None:
                return
            report.pages += 1
            await self._enqueue(page.items, report)
            if self._stop.is_stopping or not page.items or page_num >= page.total_pages:
                return

    async def _fetch(self, page_num: int) -> PollPage | None:
        """One page, retried with back-off while the answer is retryable; ``None`` when
        asked to stop during a back-off. Raises the last error once attempts run out."""
        s, p = self._s, self._p
        retry = ApiRetry(
            p.policy,
            p.rng,
            log=log,
            event="poll.retry_scheduled",
            throttled=self._limiter.throttled,
        )
        while True:
            await self._limiter.acquire(probe=False)  # it reports no outcome
            try:
                return await p.client.poll_task_result(
                    page_num,
                    s.poll_page_size,
                    task_no=s.poll_task_no,
                    domain_name=s.poll_domain_name,
                    task_result_status=s.poll_task_result_status,
                )
            except ApiError as exc:
                if not await retry.failed(exc):
                    raise
                delay = retry.back_off(exc, account=self._account.name, page=page_num)
                if not await self._sleep(delay):
                    return None

    async def _enqueue(self, details: list[TaskDetail], report: CycleReport) -> None:
        items: list[Item] = []
        for detail in details:
            if is_valid_id(detail.task_detail_no):
                items.append(_item(detail))
            else:
                report.invalid += 1
                log.warning(
                    "poll.invalid_id", account=self._account.name, id=detail.task_detail_no[:80]
                )
        report.found += len(details)
        added = await enqueue(
            self._p.redis,
            self._p.keys,
            items,
            account=self._account.name,
            only_new=self._memory,
        )
        report.enqueued += added
        report.known += len(items) - added

    def _failed(self, report: CycleReport, code: str, error: str, *, fatal: bool = False) -> None:
        self.failures += 1
        report.error = code
        log.error(
            "poll.failed",
            account=self._account.name,
            code=code,
            error=error,
            fatal=fatal,
            failures=self.failures,
            retry_in_s=round(self._next_delay_s(report), 3),
        )

    def _next_delay_s(self, report: CycleReport) -> float:
        """``poll_interval_s`` after a good cycle; after failures the probe back-off
        (doubling up to ``probe_cap_s``), never less than the interval."""
        interval = self._s.poll_interval_s
        if report.error is None:
            return interval
        return max(interval, self._p.policy.probe_delay_s(self.failures))

    async def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless asked to stop (which ends the sleep); False if stopping."""
        if self._stop.is_stopping:
            return False
        with anyio.CancelScope() as scope:
            self._pause = scope
            try:
                await self._p.clock.sleep(seconds)
            finally:
                self._pause = None
        return not self._stop.is_stopping

    def _reload(self) -> None:
        if self._p.reload_credentials is not None:
            self._p.reload_credentials()  # a source that cannot be read keeps what is in use

    def _public_settings(self, once: bool) -> dict[str, object]:
        s = self._s
        return {
            "account": self._account.name,
            "once": once,
            "endpoint": self._account.endpoint,
            "rate_limit": self._account.rate_limit,
            "page_size": s.poll_page_size,
            "max_pages": s.poll_max_pages,
            "interval_s": s.poll_interval_s,
            "task_result_status": s.poll_task_result_status,
            "task_no": s.poll_task_no,
            "domain_name": s.poll_domain_name,
            "memory_ttl_s": self._memory.ttl_s,
        }


def _text(value: object) -> str | None:
    return str(value)[:_META_MAX] if value not in (None, "") else None


def _item(detail: TaskDetail) -> Item:
    return Item(detail.task_detail_no, _text(detail.task_no), _text(detail.domain_name))
