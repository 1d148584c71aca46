"""Wiring and shutdown: one task group owns every long-lived task of ``ackworker run``.

Shutdown is two-phase. The first SIGTERM or SIGINT sets ``stopping``: the intake stops
reading, sends the open batch and closes the batch stream; senders finish what is queued and
in flight. If that takes longer than ``shutdown_grace_s``, or a second signal arrives,
everything is cancelled. Either way the final step runs shielded (bounded): entries read
but never sent are handed back to the group as new stream entries, so another consumer reads
them at once; entries whose request may have reached the API stay pending in this consumer's
PEL, where ``claim_idle_ms`` later another consumer claims them. Nothing is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import anyio
import structlog
from anyio.abc import ObjectReceiveStream, TaskGroup, TaskStatus
from redis.exceptions import ResponseError

from worker.config.settings import Settings
from worker.config.topology import login_problem
from worker.entries import Batch
from worker.errors import ConfigError, clip, describe
from worker.lifecycle import TwoPhaseStop
from worker.logs import get_logger
from worker.observe.cost import request_vitals
from worker.observe.launch import start_watching
from worker.observe.view import Gate, Gates, WorkerView, paused_accounts
from worker.pipeline.intake import Intake, IntakeConfig
from worker.pipeline.lanes import (
    Lane,
    WorkerParts,
    build_housekeeper,
    build_lanes,
    build_source,
    is_routed,
)
from worker.pipeline.processor import Work
from worker.pipeline.router import Router, orphaned_accounts
from worker.retry import redis_backoff_s
from worker.store.connection import REDIS_ERRORS
from worker.store.heartbeat import Heartbeat
from worker.store.source import ensure_group
from worker.totals import Totals

log = get_logger("worker")

FINAL_WRITE_S = 10.0
DRAIN_IDLE_S = 1.0  # how often a drained account's stream is looked at again once empty


class Worker:
    """One ``ackworker run`` consumer. :meth:`run` returns the totals when it has stopped."""

    def __init__(self, settings: Settings, parts: WorkerParts) -> None:
        self._s = settings
        self._p = parts
        self.totals = Totals()
        self._stop = TwoPhaseStop()
        self._tg: TaskGroup | None = None
        self._pipeline_tg: TaskGroup | None = None
        self._orphans: list[str] = []
        self._lanes = build_lanes(settings, parts, self.totals, self._spawn)
        self._housekeeper = build_housekeeper(settings, parts, self._lanes.values())

    @property
    def lanes(self) -> Mapping[str, Lane]:
        """Every account's lane, by account name."""
        return MappingProxyType(self._lanes)

    @property
    def held(self) -> int:
        """Entries read and not settled, every lane together."""
        return sum(len(lane.holdings) for lane in self._lanes.values())

    def _gates(self) -> dict[str, Gate]:
        # An account is paused by refused credentials (its gate) or an outage (its limiter).
        return {name: Gates((lane.gate, lane.limiter.outage)) for name, lane in self._lanes.items()}

    def view(self) -> WorkerView:
        """A read-only view of this worker's state, for ``worker.stats`` and ``/metrics``."""
        p = self._p
        routed = is_routed(self._s)
        streams = tuple(lane.keys.tasks for lane in self._lanes.values()) if routed else ()
        return WorkerView(
            p.redis,
            p.keys,
            self.totals,
            _Held(self),
            self._gates(),
            self._stop.stopping,
            self._s.rate_limit,
            account_streams=streams,
        )

    def _heartbeat(self) -> Heartbeat:
        p = self._p
        return Heartbeat(p.redis, p.keys, self._s.consumer, self.vitals, clock=p.clock)

    def vitals(self) -> dict[str, str | int]:
        """What each heartbeat carries besides who and where (see worker.store.heartbeat)."""
        return {
            "state": "draining" if self._stop.is_stopping else "running",
            "paused": paused_accounts(self._gates()),
            "confirmed": self.totals.confirmed,
            "duplicates": self.totals.duplicates,
            "dead": sum(self.totals.dead.values()),
            "held": self.held,
            # What requests cost: ackworker status sums these over the fleet.
            **request_vitals(self.totals),
        }

    def request_stop(self) -> None:
        """First call: drain within the grace period. Second call: stop at once."""
        if self._stop.request():
            log.info("worker.draining", grace_s=self._s.shutdown_grace_s, held=self.held)
            if self._tg is not None:
                self._tg.start_soon(self._grace_timer)
        else:
            log.warning("worker.stopping_now", held=self.held)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> Totals:
        """Consume until stopped; ``task_status.started()`` fires once the group exists."""
        try:
            with self._stop.hard:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    # Watching starts first, so /healthz answers while Redis is still awaited.
                    await start_watching(tg, self._s, self.view(), self._p.clock)
                    await self._connect()
                    await tg.start(self._heartbeat().run)
                    for lane in self._lanes.values():
                        tg.start_soon(lane.renewer.run)
                        tg.start_soon(lane.limiter.watch)
                        if lane.hub is not None:
                            tg.start_soon(lane.hub.run, self._stop.stopping)
                    tg.start_soon(self._housekeeper.run)
                    log.info("worker.started", consumer=self._s.consumer, **self._public_settings())
                    task_status.started()
                    if not self._stop.is_stopping:
                        await self._pipeline()
                    tg.cancel_scope.cancel()  # ends the grace timer and the watchers
        except* ConfigError as group:
            # A setting problem found while connecting; callers expect it unwrapped.
            raise group.exceptions[0] from None
        finally:
            self._tg = None
            await self._final_writes()
        return self.totals

    async def _connect(self) -> None:
        """Create the group, waiting with back-off while Redis is unreachable.

        A Redis that refuses our credentials is a setting problem: ConfigError, exit 2.
        """
        failures = 0
        while not self._stop.is_stopping:
            try:
                await ensure_group(self._p.redis, self._p.keys)
                for lane in self._lanes.values():
                    await ensure_group(self._p.redis, lane.keys)
                await self._find_orphans()
                return
            except REDIS_ERRORS as exc:
                problem = login_problem(exc)
                if problem is not None:
                    raise problem from None
                if isinstance(exc, ResponseError):
                    raise  # a reply error other than the login's is not an outage to wait out
                failures += 1
                delay = redis_backoff_s(failures)
                log.warning("redis.unavailable", error=clip(str(exc)), retry_in_s=delay)
                await self._p.clock.sleep(delay)

    async def _find_orphans(self) -> None:
        p = self._p
        routed = self._s.account_names if is_routed(self._s) else ()
        self._orphans = await orphaned_accounts(p.redis, p.keys, routed)
        self._housekeeper.watch(p.keys.account_stream(a) for a in self._orphans)

    async def _pipeline(self) -> None:
        s = self._s
        claim_every_ms = max(100, min(s.claim_idle_ms // 2, 30_000))
        async with anyio.create_task_group() as tg:
            # Busy rechecks run in this group too, so draining waits for them.
            self._pipeline_tg = tg
            if is_routed(s):
                tg.start_soon(self._router(claim_every_ms).run)
            for account in self._orphans:
                tg.start_soon(self._drain(account, claim_every_ms).run)
            for lane in self._lanes.values():
                tg.start_soon(self._run_lane, lane, claim_every_ms)

    def _router(self, claim_every_ms: int) -> Router:
        p, s = self._p, self._s
        targets = {name: p.keys.account_stream(name) for name in s.account_names}
        return Router(
            p.redis,
            build_source(s, p, self.totals, p.keys),
            targets,
            consumer=s.consumer,
            claim_every_ms=claim_every_ms,
            stopping=self._stop.stopping,
            clock=p.clock,
        )

    def _drain(self, account: str, claim_every_ms: int) -> Router:
        """Moves the stream of an account this worker does not route back to the input
        stream (an entry of an account no longer configured is dead-lettered instead)."""
        p, s = self._p, self._s
        return Router(
            p.redis,
            build_source(s, p, self.totals, p.keys.for_account(account), account),
            {account: p.keys.input},
            consumer=s.consumer,
            claim_every_ms=claim_every_ms,
            stopping=self._stop.stopping,
            clock=p.clock,
            idle_s=DRAIN_IDLE_S,
        )

    async def _run_lane(self, lane: Lane, claim_every_ms: int) -> None:
        """The lane's intake and ``concurrency`` senders; returns once they have drained."""
        s = self._s
        config = IntakeConfig(s.consumer, s.batch_size, s.linger_ms, claim_every_ms)
        send, receive = anyio.create_memory_object_stream[Batch](max_buffer_size=s.concurrency)
        streams = {lane.account: send}
        stopping = self._stop.stopping
        intake = Intake(lane.source, lane.holdings, streams, config, stopping, self._p.clock)
        with structlog.contextvars.bound_contextvars(account=lane.account):
            async with anyio.create_task_group() as tg:
                tg.start_soon(intake.run)
                with receive:
                    for _ in range(s.concurrency):
                        tg.start_soon(self._sender, lane, receive.clone())

    async def _sender(self, lane: Lane, batches: ObjectReceiveStream[Batch]) -> None:
        async with batches:
            async for batch in batches:
                await self._guarded(lane, lane.processor.process, batch)

    async def _guarded(
        self, lane: Lane, work: Callable[[Batch], Awaitable[None]], batch: Batch
    ) -> None:
        """Run ``work`` on ``batch``; a Redis failure abandons the batch, never the worker.

        The processor has already forgotten the entries it gave up (not those a recheck
        still works on); they stay pending in this consumer's PEL, and after claim_idle_ms
        another consumer (or this one) claims them again.
        """
        try:
            await work(batch)
        except REDIS_ERRORS as exc:
            log.error(
                "batch.abandoned",
                batch_id=batch.batch_id,
                size=batch.size,
                error=describe(exc),
            )

    def _spawn(self, account: str, work: Work, batch: Batch) -> None:
        if self._pipeline_tg is not None:
            self._pipeline_tg.start_soon(self._spawned, self._lanes[account], work, batch)

    async def _spawned(self, lane: Lane, work: Work, batch: Batch) -> None:
        with structlog.contextvars.bound_contextvars(account=lane.account):
            await self._guarded(lane, work, batch)

    async def _grace_timer(self) -> None:
        await anyio.sleep(self._s.shutdown_grace_s)
        log.warning("worker.grace_expired", held=self.held)
        self._stop.hard.cancel()

    async def _final_writes(self) -> None:
        with anyio.move_on_after(FINAL_WRITE_S, shield=True):
            for lane in self._lanes.values():
                unsent = lane.holdings.unsent()
                try:
                    moved = await lane.settler.hand_back(unsent)
                except REDIS_ERRORS as exc:
                    log.error("worker.hand_back_failed", count=len(unsent), error=clip(str(exc)))
                else:
                    lane.holdings.discard(unsent)
                    self.totals.handed_back += moved
            # Last, once nothing unsent is pending: else every restart adds a consumer for ever.
            await self._housekeeper.remove_self()
        log.info(
            "worker.stopped",
            consumer=self._s.consumer,
            still_pending=self.held,
            **self.totals.as_dict(),
        )

    def _public_settings(self) -> dict[str, object]:
        s = self._s
        return {
            "batch_size": s.batch_size,
            "linger_ms": s.linger_ms,
            "concurrency": s.concurrency,
            "rate_limit": s.rate_limit,
            "max_attempts": s.max_attempts,
            "endpoint": s.endpoint,
            "signature": s.signature,
            "key_prefix": s.key_prefix,
        }


class _Held:
    """``len()`` is every lane's held entries, for :class:`~worker.observe.view.WorkerView`."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def __len__(self) -> int:
        return self._worker.held
