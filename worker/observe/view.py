"""A read-only view of a running worker, for the ``worker.stats`` events and ``/metrics``.

:class:`WorkerView` joins the worker's :class:`~worker.totals.Totals` with what only Redis
knows (the backlog and the pending count), read with a bounded timeout so a slow Redis cannot
stall a scrape or a stats event, and with the state of every account's send gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from worker.entries import DEFAULT_ACCOUNT
from worker.logs import describe_error
from worker.store.keys import Keys
from worker.totals import Totals

REDIS_READ_TIMEOUT_S = 1.0


class Gate(Protocol):
    """What a view reads of a send gate (:class:`~worker.pipeline.sendgate.SendGate`)."""

    @property
    def is_open(self) -> bool:
        """True while the account may send."""
        ...

    @property
    def problem(self) -> str | None:
        """The code of the answer that closed the gate, if any."""
        ...


@dataclass(frozen=True, slots=True)
class Gates:
    """Several gates of one account read as one: open while all are open; the ``problem`` of
    the first closed one (the send gate's credentials problem, then an outage pause)."""

    parts: tuple[Gate, ...]

    @property
    def is_open(self) -> bool:
        """True while every part is open."""
        return all(g.is_open for g in self.parts)

    @property
    def problem(self) -> str | None:
        """The first closed part's problem."""
        return next((g.problem or "paused" for g in self.parts if not g.is_open), None)


def paused_accounts(gates: Mapping[str, Gate]) -> str:
    """Closed gates as ``code`` (default account) or ``account:code``, comma separated; ``""``
    while every gate is open."""
    problems = []
    for account, gate in gates.items():
        if not gate.is_open:
            code = gate.problem or "paused"
            problems.append(code if account == DEFAULT_ACCOUNT else f"{account}:{code}")
    return ",".join(problems)


@dataclass(frozen=True, slots=True)
class StreamSample:
    """``XLEN`` and the group's ``XPENDING`` count; both None and ``error`` set on failure."""

    backlog: int | None
    pending: int | None
    error: str | None = None


@dataclass(slots=True)
class WorkerView:
    """What the endpoint and ``worker.stats`` look at; the runner builds one per worker."""

    redis: Redis | RedisCluster  # the worker's client, whatever the deployment
    keys: Keys
    totals: Totals
    holdings: Sized  # the worker's held entries (every lane's)
    gates: Mapping[str, Gate]  # every account's send gate, by account name
    stopping: anyio.Event
    rate_limit_rps: float
    redis_timeout_s: float = REDIS_READ_TIMEOUT_S
    # With several accounts: their streams, where the input's entries wait to be sent.
    account_streams: tuple[str, ...] = ()

    @property
    def held(self) -> int:
        """Entries this process has read and not settled."""
        return len(self.holdings)

    @property
    def sending_problem(self) -> str | None:
        """None while every account may send, else the codes that closed gates (``code`` for
        the default account, ``account:code`` for the others)."""
        return paused_accounts(self.gates) or None

    async def sample_stream(self) -> StreamSample:
        """Read the backlog and pending count (the input stream's and, with several accounts,
        their streams' together); a failure is reported, never raised."""
        backlog = pending = 0
        try:
            with anyio.fail_after(self.redis_timeout_s):
                for stream in (self.keys.input, *self.account_streams):
                    backlog += int(await self.redis.xlen(stream))
                    summary: Any = await self.redis.xpending(stream, self.keys.group)
                    pending += int(summary["pending"])
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            return StreamSample(None, None, describe_error(exc))
        return StreamSample(backlog, pending)

    async def redis_problem(self) -> str | None:
        """None when Redis answers PING within the timeout, else what went wrong."""
        try:
            with anyio.fail_after(self.redis_timeout_s):
                await self.redis.ping()
        except (RedisError, OSError) as exc:
            return describe_error(exc)
        return None
