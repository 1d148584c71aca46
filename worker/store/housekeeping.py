"""Housekeeping: what stopped and crashed workers leave in Redis, swept by the live ones.

- **Leases.** An in-flight lease (``<prefix>:inflight``, number -> ``consumer|batch|deadline``)
  has no expiry of its own; its holder releases it when the batch settles. A worker that dies
  leaves its leases behind, and when its entries are then dead-lettered at claim time or
  trimmed nobody settles them. An expired lease already blocks nothing (a reservation takes it
  over), so deleting one that is past its deadline by more than a grace only frees memory. Each
  round reads one ``HSCAN`` page and deletes, field by field in one script, those still
  unchanged and expired on Redis's clock, so a lease renewed or taken meanwhile is kept.
- **Consumers.** Every ``ackworker run`` joins each stream's group as ``<host>-<pid>``; without
  care every restart adds one to ``XINFO CONSUMERS`` for ever. A consumer with nothing pending,
  idle longer than :attr:`Housekeeper.consumer_idle_ms` and without a live heartbeat is removed
  (``XGROUP DELCONSUMER``). The script checks again that nothing is pending, because deleting a
  consumer drops its pending entries from the group: one that has just read entries is kept.
  A worker that stops cleanly removes its own consumer the same way (:meth:`remove_self`).

A Redis failure is logged (``housekeeping.failed``) and the round tried again after a back-off:
housekeeping never stops the worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import describe
from worker.logs import get_logger
from worker.retry import redis_backoff_s
from worker.store.connection import REDIS_ERRORS, RedisClient, register_script
from worker.store.heartbeat import INTERVAL_S, TTL_FACTOR
from worker.store.keys import Keys

log = get_logger("housekeeping")

SWEEP_COUNT = 500  # HSCAN COUNT of one round: the work of a round stays bounded
MAX_REMOVED = 100  # consumers removed per stream and round
_INTERVAL_CAP_S = 30.0

# KEYS: inflight. ARGV: grace ms, then number/lease pairs as HSCAN saw them. Deletes each
# lease still holding that value and past its deadline by more than the grace; returns how
# many. A lease without a readable deadline blocks nothing either (see dedupe), so it goes too.
_SWEEP = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grace_ms, swept = tonumber(ARGV[1]), 0
for j = 2, #ARGV, 2 do
  local held = redis.call('HGET', KEYS[1], ARGV[j])
  if held == ARGV[j + 1] then
    local deadline = tonumber(string.match(held, '|(%d+)$')) or 0
    if deadline + grace_ms < now_ms then
      redis.call('HDEL', KEYS[1], ARGV[j])
      swept = swept + 1
    end
  end
end
return swept
"""

# KEYS: stream, workers index, the consumer's heartbeat hash. ARGV: group, consumer, min idle
# ms, '1' to require no live heartbeat. Returns 1 when the consumer was removed, else 0.
_REMOVE = """
local group, consumer, min_idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[4] == '1' then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  local expiry = tonumber(redis.call('ZSCORE', KEYS[2], consumer))
  if expiry and expiry >= now_ms then return 0 end
end
-- Checked here, not only by the caller: DELCONSUMER would drop entries it has just read.
if #redis.call('XPENDING', KEYS[1], group, '-', '+', 1, consumer) > 0 then return 0 end
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if info['name'] == consumer then
    if tonumber(info['idle']) < min_idle then return 0 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, consumer)
    return 1
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class HousekeepingConfig:
    """``consumer``: this worker, never removed by a round; ``streams``: the stream keys whose
    group's consumers are looked after (the input stream and each lane's; more with
    :meth:`Housekeeper.watch`); ``claim_idle_ms`` sets the pace and the bounds (see
    :class:`Housekeeper`)."""

    consumer: str
    streams: tuple[str, ...]
    claim_idle_ms: int
    heartbeat_ttl_ms: int = round(INTERVAL_S * TTL_FACTOR * 1000)


class Housekeeper:
    """Sweeps abandoned leases and removes gone consumers, one bounded round at a time."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        config: HousekeepingConfig,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._config = config
        self._clock = clock
        self._sweep = register_script(redis, _SWEEP)
        self._remove = register_script(redis, _REMOVE)
        self._cursor = 0
        self._streams = list(config.streams)

    def watch(self, streams: Iterable[str]) -> None:
        """Look after the consumers of ``streams`` too (each once)."""
        self._streams = list(watched_streams(*self._streams, *streams))

    @property
    def interval_s(self) -> float:
        """Seconds between rounds: half the claim idle time, at most 30 s."""
        return min(_INTERVAL_CAP_S, self._config.claim_idle_ms / 2000.0)

    @property
    def lease_grace_ms(self) -> int:
        """How long past its deadline a lease is left alone: one claim idle time, more than
        its holder's renewer (every third of it) needs to extend a lease it still holds."""
        return self._config.claim_idle_ms

    @property
    def consumer_idle_ms(self) -> int:
        """How long a consumer must have been idle to be removed: twice the longer of the
        claim idle time and a heartbeat's life, so a worker between reads is never taken."""
        return 2 * max(self._config.claim_idle_ms, self._config.heartbeat_ttl_ms)

    async def run(self) -> None:
        """A round every :attr:`interval_s` until cancelled; a failed round is logged and
        tried again after :func:`~worker.retry.redis_backoff_s`."""
        failures = 0
        while True:
            await self._clock.sleep(redis_backoff_s(failures) if failures else self.interval_s)
            try:
                await self.round()
            except REDIS_ERRORS as exc:
                failures += 1
                log.warning("housekeeping.failed", error=describe(exc), failures=failures)
            else:
                failures = 0

    async def round(self) -> tuple[int, int]:
        """One round: a page of leases, then every watched stream's consumers; returns how
        many leases were swept and consumers removed."""
        swept = await self.sweep_leases()
        removed = 0
        for stream in self._streams:
            removed += await self.remove_gone_consumers(stream)
        return swept, removed

    async def sweep_leases(self) -> int:
        """Read the next ``HSCAN`` page of leases and sweep the abandoned ones."""
        reply: Any = await self._redis.hscan(self._keys.inflight, self._cursor, count=SWEEP_COUNT)
        self._cursor = int(reply[0])
        return await self.sweep(reply[1])

    async def sweep(self, leases: Mapping[bytes, bytes]) -> int:
        """Delete the ``leases`` (number -> value as read) still unchanged and expired for
        longer than :attr:`lease_grace_ms`; returns how many."""
        if not leases:
            return 0
        args: list[bytes | int] = [self.lease_grace_ms]
        args += [x for kv in leases.items() for x in kv]
        swept = int(await self._sweep(keys=[self._keys.inflight], args=args))
        if swept:
            log.info("housekeeping.leases_swept", count=swept, scanned=len(leases))
        return swept

    async def remove_gone_consumers(self, stream: str) -> int:
        """Remove the consumers of ``stream``'s group that are gone; returns how many."""
        try:
            rows: Any = await self._redis.xinfo_consumers(stream, self._keys.group)
        except REDIS_ERRORS as exc:
            if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                return 0  # nothing to tidy: the stream or group does not exist (yet)
            raise
        bound = self.consumer_idle_ms
        names = [_name(r) for r in rows if int(r["pending"]) == 0 and int(r["idle"]) > bound]
        gone = [n for n in names if n != self._config.consumer][:MAX_REMOVED]
        removed = 0
        for name in gone:
            removed += await self._remove_one(stream, name, bound, check_heartbeat=True)
        return removed

    async def remove_self(self) -> int:
        """On a clean stop: remove this worker's own consumer from each watched stream's
        group where it has nothing pending (entries it still holds keep it, for a claim).
        A failure is logged, never raised; returns how many groups it left."""
        removed = 0
        for stream in self._streams:
            try:
                removed += await self._remove_one(
                    stream, self._config.consumer, 0, check_heartbeat=False
                )
            except REDIS_ERRORS as exc:
                log.warning("housekeeping.failed", error=describe(exc), failures=1)
        return removed

    async def _remove_one(
        self, stream: str, consumer: str, min_idle_ms: int, *, check_heartbeat: bool
    ) -> int:
        keys = [stream, self._keys.workers, self._keys.heartbeat(consumer)]
        args: list[str | int] = [self._keys.group, consumer, min_idle_ms]
        args.append("1" if check_heartbeat else "0")
        if not int(await self._remove(keys=keys, args=args)):
            return 0
        log.info("housekeeping.consumer_removed", consumer=consumer, stream=stream)
        return 1


def watched_streams(*streams: str) -> tuple[str, ...]:
    """``streams`` each once, in order (with one account the lane reads the input stream)."""
    return tuple(dict.fromkeys(streams))


def _name(row: Mapping[str, Any]) -> str:
    name = row["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
