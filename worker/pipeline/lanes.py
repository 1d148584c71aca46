"""Lanes, and the composition root that builds them: one lane per account, each a whole pipeline.

A lane reads its own stream (the input stream itself with one account; the account's stream,
fed by :mod:`worker.pipeline.router`, with several), holds at most its own prefetch bound,
and sends through its own send gate, limiter (``<prefix>:limiter[:<account>]``, with its own
fleet pause), HTTP client and ``concurrency`` senders. So an account that is throttled,
paused or refused holds up nothing but itself. Every log line a lane's tasks write carries
``account`` (bound with structlog's contextvars).

:func:`build_lanes` is the one place where the parts of a worker are put together: it returns
finished, immutable lanes, and :class:`~worker.pipeline.runner.Worker` only runs them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import anyio

from worker.api.client import Acknowledger, PollClient
from worker.clock import SYSTEM_CLOCK, Clock
from worker.config.accounts import Account
from worker.config.settings import Settings
from worker.entries import Batch, Holdings
from worker.errors import ConfigError
from worker.observe.metered import MeteredClient, MeteredLimiter
from worker.pipeline.coalesce import HubConfig, VerifyHub
from worker.pipeline.processor import Processor, ProcessorDeps, Work
from worker.pipeline.sendgate import SendGate
from worker.pipeline.verify import Verifier
from worker.retry import RetryPolicy
from worker.store.connection import RedisClient
from worker.store.dedupe import Dedupe, DedupeConfig
from worker.store.housekeeping import Housekeeper, HousekeepingConfig, watched_streams
from worker.store.keys import Keys
from worker.store.leases import LeaseRenewer
from worker.store.limiter import RateLimiter
from worker.store.listing import SharedListing
from worker.store.outage import OutageRule
from worker.store.settle import Settler
from worker.store.source import SourceConfig, StreamSource
from worker.totals import POLL, Totals

Spawn = Callable[[str, Work, Batch], None]
"""``spawn(account, work, batch)``: run ``work(batch)`` on ``account``'s lane, in the
worker's pipeline task group (a recheck of busy numbers, a shortfall's verification)."""


@dataclass(frozen=True, slots=True)
class AccountClient:
    """One account's API client, and how to re-read its credentials after a refusal (a
    function that must not raise, as :func:`~worker.pipeline.clients.credential_reloader`)."""

    client: Acknowledger
    reload_credentials: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class WorkerParts:
    """What a worker talks to; tests build these to run a worker in-process.

    ``clients`` holds every account's client by name, the default account's included.
    """

    redis: RedisClient
    keys: Keys
    policy: RetryPolicy
    clients: Mapping[str, AccountClient]
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True, slots=True)
class Lane:
    """One account's pipeline: ``keys.tasks`` is the stream it reads, ``holdings`` what it
    has read and not settled (bounded), ``gate`` and ``limiter`` whether it may send (refused
    credentials; the fleet's rate and outage pause), ``processor`` takes its batches to their
    outcome, ``renewer`` keeps the held entries from being claimed by another consumer,
    ``hub`` (None with verification off) checks the shortfalls of its batches together."""

    account: str
    keys: Keys
    gate: SendGate
    limiter: RateLimiter
    settler: Settler
    source: StreamSource
    holdings: Holdings
    processor: Processor
    renewer: LeaseRenewer
    hub: VerifyHub | None = None


def is_routed(settings: Settings) -> bool:
    """True with several accounts: a router moves each entry to its account's stream."""
    return len(settings.account_names) > 1


def build_housekeeper(settings: Settings, parts: WorkerParts, lanes: Iterable[Lane]) -> Housekeeper:
    """The housekeeper of the input stream and each lane's (the streams of drained accounts
    are added with :meth:`~worker.store.housekeeping.Housekeeper.watch` once known)."""
    p = parts
    streams = watched_streams(p.keys.input, *(lane.keys.tasks for lane in lanes))
    config = HousekeepingConfig(settings.consumer, streams, settings.claim_idle_ms)
    return Housekeeper(p.redis, p.keys, config, p.clock)


def build_source(
    settings: Settings, parts: WorkerParts, totals: Totals, keys: Keys, account: str | None = None
) -> StreamSource:
    """A source on ``keys.tasks``; with ``account``, one account's stream."""
    s, p = settings, parts
    settler = Settler(
        p.redis, keys, dedupe_ttl_s=s.dedupe_ttl_s, consumer=s.consumer, totals=totals
    )
    accounts = frozenset(s.account_names)
    config = SourceConfig(s.consumer, s.claim_idle_ms, s.max_attempts, accounts, account)
    return StreamSource(p.redis, keys, settler, config, p.clock, totals)


def build_lanes(
    settings: Settings, parts: WorkerParts, totals: Totals, spawn: Spawn
) -> dict[str, Lane]:
    """Every account's lane, finished. Raises :class:`ConfigError` for an account that has
    no client in ``parts``."""
    builder = _LaneBuilder(settings, parts, totals, spawn)
    return {name: builder.lane(account) for name, account in settings.all_accounts.items()}


@dataclass(frozen=True, slots=True)
class _LaneBuilder:
    settings: Settings
    parts: WorkerParts
    totals: Totals
    spawn: Spawn

    def lane(self, account: Account) -> Lane:
        s, p, name = self.settings, self.parts, account.name
        client = p.clients.get(name)
        if client is None:
            raise ConfigError(f"account {name!r} is configured but has no API client")
        routed = is_routed(s)
        # One account: the lane reads the input stream and checks every entry's account.
        keys = p.keys.for_account(name) if routed else p.keys
        source = build_source(s, p, self.totals, keys, name if routed else None)
        gate = SendGate(p.policy, p.clock, client.reload_credentials or (lambda: None))
        # About 2 x concurrency x batch_size: queued batches plus those being sent, plus one.
        # Parked short batches (waiting for verification) take no room, up to a round's worth.
        holdings = Holdings(s.batch_size * (2 * s.concurrency + 1), s.verify_max_numbers)
        limiter = self._limiter(account, holdings)
        slots = anyio.Semaphore(s.concurrency)
        verifier = build_verifier(
            s,
            client.client,
            policy=p.policy,
            clock=p.clock,
            rng=p.rng,
            slots=slots,
            counted=lambda: self.totals.count_request(POLL, name),
        )
        hub = None
        if verifier is not None:
            # Another replica's reading is worth reusing for about as long as a shortfall waits.
            ttl_ms = max(1000, 2 * s.verify_max_wait_ms)
            shared = SharedListing(p.redis, p.keys.listing_for(name), ttl_ms)
            hub = VerifyHub(verifier, limiter, hub_config(s), p.clock, shared)
        processor = self._processor(
            name, client.client, gate, limiter, source.settler, holdings, slots, hub
        )
        renewer = LeaseRenewer(
            p.redis, keys, s.consumer, holdings, claim_idle_ms=s.claim_idle_ms, clock=p.clock
        )
        return Lane(
            name, keys, gate, limiter, source.settler, source, holdings, processor, renewer, hub
        )

    def _limiter(self, account: Account, holdings: Holdings) -> MeteredLimiter:
        p, policy = self.parts, self.parts.policy
        rule = OutageRule(policy.outage_after_s, policy.probe_base_s, policy.probe_cap_s)
        return MeteredLimiter(
            p.redis,
            p.keys.limiter_for(account.name),
            account.rate_limit,
            p.clock,
            totals=self.totals,
            account=account.name,
            outage=rule,
            held=holdings,
        )

    def _processor(
        self,
        name: str,
        client: Acknowledger,
        gate: SendGate,
        limiter: RateLimiter,
        settler: Settler,
        holdings: Holdings,
        slots: anyio.Semaphore,
        hub: VerifyHub | None,
    ) -> Processor:
        s, p, totals = self.settings, self.parts, self.totals
        dedupe = Dedupe(p.redis, p.keys, s.consumer, DedupeConfig(s.dedupe_ttl_s, s.claim_idle_ms))
        deps = ProcessorDeps(
            dedupe=dedupe,
            limiter=limiter,
            client=MeteredClient(client, totals, p.clock),
            settler=settler,
            gate=gate,
            policy=p.policy,
            holdings=holdings,
            totals=totals,
            spawn=lambda work, batch: self.spawn(name, work, batch),
            send_slots=slots,
            clock=p.clock,
            rng=p.rng,
            hub=hub,
        )
        return Processor(deps)


def build_verifier(
    settings: Settings,
    client: object,
    *,
    policy: RetryPolicy,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    slots: anyio.Semaphore | None = None,
    counted: Callable[[], None] = lambda: None,
) -> Verifier | None:
    """A verifier for one account's client, or None when ``verify_shortfall`` is off or the
    client cannot poll (a test's scripted API). ``slots`` (the lane's send slots) bound the
    pages in flight together with the acknowledgements; ``counted`` counts each poll."""
    if not settings.verify_shortfall or not isinstance(client, PollClient):
        return None
    return Verifier(
        client,
        page_size=settings.poll_page_size,
        policy=policy,
        clock=clock,
        rng=rng,
        slots=slots,
        counted=counted,
    )


def hub_config(settings: Settings) -> HubConfig:
    """When and how much a lane's :class:`VerifyHub` reads, from the settings."""
    s = settings
    return HubConfig(
        linger_s=s.verify_linger_ms / 1000.0,
        max_wait_s=s.verify_max_wait_ms / 1000.0,
        max_numbers=s.verify_max_numbers,
        max_pages=s.verify_max_pages,
        batch_size=s.batch_size,
    )
