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

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import ObjectReceiveStream, TaskGroup, TaskStatus
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

from worker.accounts import DEFAULT_ACCOUNT
from worker.clock import SYSTEM_CLOCK, Clock
from worker.dedupe import Dedupe, DedupeConfig
from worker.entries import Batch, Holdings
from worker.errors import ConfigError
from worker.gate import SendGate, paused_accounts
from worker.heartbeat import Heartbeat
from worker.intake import Intake, IntakeConfig
from worker.keeper import Keeper
from worker.keys import Keys
from worker.lanes import AccountParts, Lane
from worker.logs import get_logger
from worker.observed import ObservedClient, ObservedLimiter
from worker.processor import Acknowledger, Processor, ProcessorDeps
from worker.redis_conn import REDIS_ERRORS, RedisClient
from worker.retry import RetryPolicy
from worker.router import Router, orphaned_accounts
from worker.settings import Settings
from worker.settle import Settler
from worker.source import SourceConfig, StreamSource, ensure_group
from worker.stats import Totals, WorkerView
from worker.verify import make_verifier
from worker.watch import start_watching

log = get_logger("worker")

FINAL_WRITE_S = 10.0
DRAIN_IDLE_S = 1.0  # how often a drained account's stream is looked at again once empty


@dataclass(slots=True)
class WorkerParts:
    """What a worker talks to; tests build these to run a worker in-process.

    ``client`` and ``reload_credentials`` serve the default account; ``accounts`` holds the
    client of every named account in the settings.
    """

    redis: RedisClient
    client: Acknowledger
    keys: Keys
    policy: RetryPolicy
    reload_credentials: Callable[[], None] | None = None
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random = field(default_factory=random.Random)
    accounts: Mapping[str, AccountParts] = field(default_factory=dict)


class Worker:
    """One ``ackworker run`` consumer. :meth:`run` returns the totals when it has stopped."""

    def __init__(self, settings: Settings, parts: WorkerParts) -> None:
        self._s = settings
        self._p = parts
        self.totals = Totals()
        self._stopping = anyio.Event()
        self._hard = anyio.CancelScope()
        self._tg: TaskGroup | None = None
        self._pipeline_tg: TaskGroup | None = None
        names = settings.account_names
        self._routed = len(names) > 1
        self._orphans: list[str] = []
        self._lanes = {name: self._lane(name) for name in names}
        self.gate = self._lanes[DEFAULT_ACCOUNT].gate
        self.holdings = self._lanes[DEFAULT_ACCOUNT].holdings

    @property
    def held(self) -> int:
        """Entries read and not settled, every lane together."""
        return sum(len(lane.holdings) for lane in self._lanes.values())

    def _source(self, keys: Keys, account: str | None = None) -> StreamSource:
        """A source on ``keys.tasks``; with ``account``, one account's stream."""
        s, p = self._s, self._p
        settler = Settler(p.redis, keys, dedupe_ttl_s=s.dedupe_ttl_s, consumer=s.consumer)
        accounts = frozenset(s.account_names)
        config = SourceConfig(s.consumer, s.claim_idle_ms, s.max_attempts, accounts, account)
        return StreamSource(p.redis, keys, settler, config, p.clock, self.totals)

    def _lane(self, account: str) -> Lane:
        s, p = self._s, self._p
        if account == DEFAULT_ACCOUNT:
            parts = AccountParts(p.client, p.reload_credentials)
        elif account in p.accounts:
            parts = p.accounts[account]
        else:
            raise ConfigError(f"account {account!r} is configured but has no API client")
        if self._routed:
            keys = p.keys.for_account(account)
            source = self._source(keys, account)
        else:
            # One account: the lane reads the input stream and checks every entry's account.
            keys = p.keys
            source = self._source(keys)
        gate = SendGate(p.policy, p.clock, parts.reload_credentials or (lambda: None))
        # About 2 x concurrency x batch_size: queued batches plus those being sent, plus one.
        holdings = Holdings(s.batch_size * (2 * s.concurrency + 1))
        lane = Lane(account, keys, gate, source.settler, source, holdings)
        lane.processor = Processor(self._deps(lane, parts))
        return lane

    def _deps(self, lane: Lane, parts: AccountParts) -> ProcessorDeps:
        s, p = self._s, self._p
        account = s.account(lane.account)
        assert account is not None
        slots = anyio.Semaphore(s.concurrency)
        verifier = make_verifier(
            s, parts.client, policy=p.policy, clock=p.clock, rng=p.rng, slots=slots
        )
        return ProcessorDeps(
            dedupe=Dedupe(
                p.redis, p.keys, s.consumer, DedupeConfig(s.dedupe_ttl_s, s.claim_idle_ms)
            ),
            limiter=ObservedLimiter(
                p.redis,
                p.keys.limiter_for(lane.account),
                account.rate_limit,
                p.clock,
                totals=self.totals,
                account=lane.account,
            ),
            client=ObservedClient(parts.client, self.totals, p.clock),
            settler=lane.settler,
            gate=lane.gate,
            policy=p.policy,
            holdings=lane.holdings,
            totals=self.totals,
            spawn=lambda batch: self._spawn_recheck(lane, batch),
            send_slots=slots,
            clock=p.clock,
            rng=p.rng,
            verifier=verifier,
        )

    def view(self) -> WorkerView:
        """A read-only view of this worker's state, for ``worker.stats`` and ``/metrics``."""
        p = self._p
        routed = tuple(lane.keys.tasks for lane in self._lanes.values()) if self._routed else ()
        return WorkerView(
            p.redis,
            p.keys,
            self.totals,
            _Held(self),
            self.gate,
            self._stopping,
            self._s.rate_limit,
            gates={name: lane.gate for name, lane in self._lanes.items()},
            account_streams=routed,
        )

    def _keeper(self, lane: Lane) -> Keeper:
        p, s = self._p, self._s
        return Keeper(
            p.redis,
            lane.keys,
            s.consumer,
            lane.holdings,
            claim_idle_ms=s.claim_idle_ms,
            clock=p.clock,
        )

    def _heartbeat(self) -> Heartbeat:
        p = self._p
        return Heartbeat(p.redis, p.keys, self._s.consumer, self.vitals, clock=p.clock)

    def vitals(self) -> dict[str, str | int]:
        """What each heartbeat carries besides who and where (see worker.heartbeat)."""
        return {
            "state": "draining" if self._stopping.is_set() else "running",
            "paused": paused_accounts({n: lane.gate for n, lane in self._lanes.items()}),
            "confirmed": self.totals.confirmed,
            "duplicates": self.totals.duplicates,
            "dead": sum(self.totals.dead.values()),
            "held": self.held,
        }

    def request_stop(self) -> None:
        """First call: drain within the grace period. Second call: stop at once."""
        if not self._stopping.is_set():
            log.info("worker.draining", grace_s=self._s.shutdown_grace_s, held=self.held)
            self._stopping.set()
            if self._tg is not None:
                self._tg.start_soon(self._grace_timer)
        else:
            log.warning("worker.stopping_now", held=self.held)
            self._hard.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> Totals:
        """Consume until stopped; ``task_status.started()`` fires once the group exists."""
        try:
            with self._hard:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    # Watching starts first, so /healthz answers while Redis is still awaited.
                    await start_watching(tg, self._s, self.view(), self._p.clock)
                    await self._connect()
                    await tg.start(self._heartbeat().run)
                    for lane in self._lanes.values():
                        tg.start_soon(self._keeper(lane).run)
                    log.info("worker.started", consumer=self._s.consumer, **self._public_settings())
                    task_status.started()
                    if not self._stopping.is_set():
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
        while not self._stopping.is_set():
            try:
                await ensure_group(self._p.redis, self._p.keys)
                for lane in self._lanes.values():
                    await ensure_group(self._p.redis, lane.keys)
                await self._find_orphans()
                return
            except (AuthenticationError, AuthorizationError) as exc:
                raise ConfigError(f"ACKWORKER_REDIS_URL: Redis refused the login: {exc}") from None
            except ResponseError as exc:
                if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                    raise ConfigError(
                        f"ACKWORKER_REDIS_URL: Redis requires a password: {exc}"
                    ) from None
                raise
            except REDIS_ERRORS as exc:
                failures += 1
                delay = min(5.0, 0.2 * 2**failures)
                log.warning("redis.unavailable", error=str(exc)[:300], retry_in_s=delay)
                await self._p.clock.sleep(delay)

    async def _find_orphans(self) -> None:
        p = self._p
        routed = self._s.account_names if self._routed else ()
        self._orphans = await orphaned_accounts(p.redis, p.keys, routed)

    async def _pipeline(self) -> None:
        s = self._s
        claim_every_ms = max(100, min(s.claim_idle_ms // 2, 30_000))
        async with anyio.create_task_group() as tg:
            # Busy rechecks run in this group too, so draining waits for them.
            self._pipeline_tg = tg
            if self._routed:
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
            self._source(p.keys),
            targets,
            consumer=s.consumer,
            claim_every_ms=claim_every_ms,
            stopping=self._stopping,
            clock=p.clock,
        )

    def _drain(self, account: str, claim_every_ms: int) -> Router:
        """Moves the stream of an account this worker does not route back to the input
        stream (an entry of an account no longer configured is dead-lettered instead)."""
        p, s = self._p, self._s
        return Router(
            p.redis,
            self._source(p.keys.for_account(account), account),
            {account: p.keys.input},
            consumer=s.consumer,
            claim_every_ms=claim_every_ms,
            stopping=self._stopping,
            clock=p.clock,
            idle_s=DRAIN_IDLE_S,
        )

    async def _run_lane(self, lane: Lane, claim_every_ms: int) -> None:
        """The lane's intake and ``concurrency`` senders; returns once they have drained."""
        s = self._s
        config = IntakeConfig(s.consumer, s.batch_size, s.linger_ms, claim_every_ms)
        send, receive = anyio.create_memory_object_stream[Batch](max_buffer_size=s.concurrency)
        streams = {lane.account: send}
        intake = Intake(lane.source, lane.holdings, streams, config, self._stopping, self._p.clock)
        with structlog.contextvars.bound_contextvars(account=lane.account):
            async with anyio.create_task_group() as tg:
                tg.start_soon(intake.run)
                with receive:
                    for _ in range(s.concurrency):
                        tg.start_soon(self._sender, lane, receive.clone())

    async def _sender(self, lane: Lane, batches: ObjectReceiveStream[Batch]) -> None:
        async with batches:
            async for batch in batches:
                await self._guarded(lane, lane.processes.process, batch)

    async def _guarded(
        self, lane: Lane, work: Callable[[Batch], Awaitable[None]], batch: Batch
    ) -> None:
        """Run ``work`` on ``batch``; a Redis failure abandons the batch, never the worker.

        Its entries stay pending in this consumer's PEL; after claim_idle_ms another
        consumer (or this one) claims them again.
        """
        try:
            await work(batch)
        except REDIS_ERRORS as exc:
            lane.holdings.discard(batch.entries())
            log.error(
                "batch.abandoned",
                batch_id=batch.batch_id,
                size=batch.size,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )

    def _spawn_recheck(self, lane: Lane, batch: Batch) -> None:
        if self._pipeline_tg is not None:
            self._pipeline_tg.start_soon(self._recheck, lane, batch)

    async def _recheck(self, lane: Lane, batch: Batch) -> None:
        with structlog.contextvars.bound_contextvars(account=lane.account):
            await self._guarded(lane, lane.processes.recheck_busy, batch)

    async def _grace_timer(self) -> None:
        await anyio.sleep(self._s.shutdown_grace_s)
        log.warning("worker.grace_expired", held=self.held)
        self._hard.cancel()

    async def _final_writes(self) -> None:
        with anyio.move_on_after(FINAL_WRITE_S, shield=True):
            for lane in self._lanes.values():
                unsent = lane.holdings.unsent()
                try:
                    moved = await lane.settler.hand_back(unsent)
                except REDIS_ERRORS as exc:
                    log.error("worker.hand_back_failed", count=len(unsent), error=str(exc)[:300])
                else:
                    lane.holdings.discard(unsent)
                    self.totals.handed_back += moved
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
    """``len()`` is every lane's held entries, for :class:`~worker.stats.WorkerView`."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def __len__(self) -> int:
        return self._worker.held
