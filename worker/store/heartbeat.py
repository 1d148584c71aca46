"""The heartbeat: every ``ackworker run`` says it is alive, and ``ackworker health`` checks it.

A running worker refreshes the hash ``<prefix>:hb:<consumer>`` every :data:`INTERVAL_S` with a
TTL of three intervals, and deletes it when it stops; a worker killed with ``kill -9``, or
whose event loop is stuck, lets it expire. The sorted set ``<prefix>:workers`` (consumer ->
expiry) lists the hashes, so readers never SCAN a keyspace that holds thousands of dedupe
hashes and, in a cluster, spans every node.

Ages are measured on Redis's clock (``TIME``), never a host's, so a host whose clock is off is
judged like the others. A failed refresh is logged (``heartbeat.failed``) and tried again on
the next tick: the heartbeat never stops the worker.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis.exceptions import RedisError

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import describe
from worker.logs import get_logger
from worker.store.connection import RedisClient, redis_now_ms, register_script
from worker.store.keys import Keys

log = get_logger("heartbeat")

INTERVAL_S = 5.0
TTL_FACTOR = 3
CLEAR_S = 2.0
MAX_LISTED = 1000
# Stale members are pruned on every beat; this TTL only ends the index of a fleet long gone.
_INDEX_TTL_MS = 86_400_000
_FAILURES = (RedisError, OSError, TimeoutError)

# One refresh, on Redis's clock. ARGV: ttl ms, started_at_ms ('' on the first beat: now),
# consumer, index ttl ms, then field/value pairs. Returns the Redis time of the beat in ms.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local started = ARGV[2]
if started == '' then started = string.format('%.0f', now) end
redis.call('HSET', KEYS[1], 'started_at_ms', started, 'updated_at_ms', string.format('%.0f', now),
  'ttl_ms', ARGV[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], string.format('%.0f', now + ttl), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%.0f', now))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
return string.format('%.0f', now)
"""

Vitals = Callable[[], Mapping[str, str | int]]


class Heartbeat:
    """Refreshes this worker's heartbeat; ``vitals()`` supplies the changing fields
    (``state``, ``paused``, totals) at each beat."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        consumer: str,
        vitals: Vitals,
        *,
        interval_s: float = INTERVAL_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._consumer = consumer
        self._vitals = vitals
        self._interval_s = interval_s
        self._clock = clock
        self._script = register_script(redis, _BEAT)
        self._started_at_ms = ""
        self._failures = 0
        host = socket.gethostname()
        self._fixed: dict[str, str | int] = {"consumer": consumer, "host": host, "pid": os.getpid()}

    @property
    def ttl_ms(self) -> int:
        """How long a beat stays valid: three intervals, so one late beat is not a death."""
        return round(self._interval_s * TTL_FACTOR * 1000)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat now, report started, beat every interval; delete the heartbeat when cancelled."""
        try:
            await self.beat()
            task_status.started()
            while True:
                await self._clock.sleep(self._interval_s)
                await self.beat()
        finally:
            with anyio.move_on_after(CLEAR_S, shield=True):
                await self.clear()

    async def beat(self) -> None:
        """One refresh; a failure is logged and counted, never raised."""
        fields = {**self._fixed, **self._vitals()}
        args: list[str | int] = [self.ttl_ms, self._started_at_ms, self._consumer, _INDEX_TTL_MS]
        args += [x for kv in fields.items() for x in kv]
        keys = [self._keys.heartbeat(self._consumer), self._keys.workers]
        try:
            with anyio.fail_after(self._interval_s):
                now_ms = await self._script(keys=keys, args=args)
        except _FAILURES as exc:
            self._failures += 1
            log.warning("heartbeat.failed", error=describe(exc), failures=self._failures)
            return
        self._started_at_ms = self._started_at_ms or now_ms.decode()
        self._failures = 0

    async def clear(self) -> None:
        """Delete the heartbeat (a clean stop); a failure is logged, the TTL ends it anyway."""
        # Two steps, not a transaction: a reader skips an index member without its hash.
        try:
            await self._redis.delete(self._keys.heartbeat(self._consumer))
            await self._redis.zrem(self._keys.workers, self._consumer)
        except _FAILURES as exc:
            log.warning("heartbeat.failed", error=describe(exc), failures=self._failures + 1)


@dataclass(frozen=True, slots=True)
class Beat:
    """One worker's last heartbeat as read back; ``age_ms`` on Redis's clock."""

    consumer: str
    host: str
    pid: int
    started_at_ms: int
    age_ms: int
    ttl_ms: int
    state: str
    paused: str
    confirmed: int
    duplicates: int
    dead: int
    held: int

    @property
    def fresh(self) -> bool:
        """True while the beat is within its TTL."""
        return self.age_ms <= self.ttl_ms

    def as_json(self) -> dict[str, Any]:
        """The stable JSON form ``ackworker status --json`` prints."""
        return {
            "consumer": self.consumer,
            "host": self.host,
            "pid": self.pid,
            "started_at_ms": self.started_at_ms,
            "age_s": round(self.age_ms / 1000, 3),
            "state": self.state,
            "paused": self.paused or None,
            "confirmed": self.confirmed,
            "duplicates": self.duplicates,
            "dead": self.dead,
            "held": self.held,
        }


def _int(fields: Mapping[str, str], name: str) -> int:
    value = fields.get(name, "")
    return int(value) if value.isdigit() else 0


def _beat_from(fields: Mapping[str, str], now_ms: int) -> Beat:
    return Beat(
        consumer=fields.get("consumer", ""),
        host=fields.get("host", ""),
        pid=_int(fields, "pid"),
        started_at_ms=_int(fields, "started_at_ms"),
        age_ms=max(0, now_ms - _int(fields, "updated_at_ms")),
        ttl_ms=_int(fields, "ttl_ms"),
        state=fields.get("state", ""),
        paused=fields.get("paused", ""),
        confirmed=_int(fields, "confirmed"),
        duplicates=_int(fields, "duplicates"),
        dead=_int(fields, "dead"),
        held=_int(fields, "held"),
    )


async def read_beats(redis: RedisClient, keys: Keys) -> list[Beat]:
    """Every fresh heartbeat under the prefix (at most :data:`MAX_LISTED`), by consumer."""
    now_ms = await redis_now_ms(redis, keys.workers)
    # Inclusive, like Redis's own expiry: a hash is gone only once now is past its deadline,
    # so a beat listed here still exists and one left out has expired.
    members: Any = await redis.zrangebyscore(keys.workers, now_ms, "+inf", start=0, num=MAX_LISTED)
    async with redis.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.hgetall(keys.heartbeat(member.decode()))
        hashes: list[dict[bytes, bytes]] = await pipe.execute()
    beats = [
        _beat_from({k.decode(): v.decode("utf-8", "replace") for k, v in h.items()}, now_ms)
        for h in hashes
        if h
    ]
    return sorted((b for b in beats if b.fresh), key=lambda b: b.consumer)
