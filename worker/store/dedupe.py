"""Dedupe memory and in-flight leases, shared by every replica through Redis.

A confirmed number is remembered as a 10-byte field in a small hash
``<prefix>:seen:<bucket>:<shard>``: 4096 shards per time bucket keep each hash small enough
for Redis's compact listpack encoding (about 16 bytes per number instead of ~90 for a key or
set member per number). Buckets are ``dedupe_ttl_s / 2`` long and expire ``dedupe_ttl_s``
after they end, so a number is remembered for between 1 and 1.5 times the TTL, and a check
looks at three buckets. More, shorter buckets would hold memory closer to the TTL but cost a
lookup each per number on every batch; three was the measured balance.

A number being sent holds a lease in ``<prefix>:inflight`` (``consumer|batch|deadline_ms``) so
the same number arriving on another replica, or twice on this one, is not sent twice at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from worker.ids import digests, join_numbers
from worker.store.connection import RedisClient, register_script
from worker.store.keys import Keys

SHARDS = 4096
BUCKETS_PER_TTL = 2


class Reservation(IntEnum):
    """What :meth:`Dedupe.reserve` decided for one number."""

    GO = 0
    """Leased to this consumer: send it."""
    CONFIRMED = 1
    """Confirmed within the TTL: settle as duplicate without an API call."""
    BUSY = 2
    """Leased by a request in flight: decide again once that request has settled."""


_STATUS = {ord("0"): Reservation.GO, ord("1"): Reservation.CONFIRMED, ord("2"): Reservation.BUSY}


def bucket_s(ttl_s: int) -> int:
    """Length of one dedupe time bucket in seconds."""
    return max(1, -(-ttl_s // BUCKETS_PER_TTL))


_RESERVE_TEMPLATE = """
local seen_prefix, bucket_s, ttl_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local token, lease_ms, digests = ARGV[4], tonumber(ARGV[5]), ARGV[7]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = math.floor(tonumber(t[1]) / bucket_s)
local numbers = {}
for number in string.gmatch(ARGV[6], '[^\\n]+') do numbers[#numbers + 1] = number end
local held = redis.call('HMGET', KEYS[1], unpack(numbers))
local lease = token .. '|' .. (now_ms + lease_ms)
local out, leases = {}, {}
for i, number in ipairs(numbers) do
  local status = '0'
  if ttl_s > 0 then
    local j = (i - 1) * 12 + 1
    local shard = (string.byte(digests, j) * 256 + string.byte(digests, j + 1)) % 4096
    local field = string.sub(digests, j + 2, j + 11)
    for b = current, current - BUCKETS, -1 do
      if redis.call('HEXISTS', seen_prefix .. b .. ':' .. shard, field) == 1 then
        status = '1'
        break
      end
    end
  end
  if status == '0' and held[i] then
    local holder, deadline = string.match(held[i], '^(.*)|(%d+)$')
    -- Our own lease (a retried call of this very reservation) does not make a number busy.
    if holder ~= token and (tonumber(deadline) or 0) > now_ms then status = '2' end
  end
  if status == '0' then
    leases[#leases + 1] = number
    leases[#leases + 1] = lease
  end
  out[i] = status
end
if #leases > 0 then redis.call('HSET', KEYS[1], unpack(leases)) end
return table.concat(out)
"""
_RESERVE = _RESERVE_TEMPLATE.replace("BUCKETS", str(BUCKETS_PER_TTL))


# ARGV: 1 seen prefix, 2 bucket seconds, 3 digests back to back. Every bucket a check looks
# at loses the numbers' fields.
_FORGET = """
local seen_prefix, bucket_s, digests = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = math.floor(tonumber(redis.call('TIME')[1]) / bucket_s)
local removed = 0
for j = 1, #digests, 12 do
  local shard = (string.byte(digests, j) * 256 + string.byte(digests, j + 1)) % 4096
  local field = string.sub(digests, j + 2, j + 11)
  for b = current, current - BUCKETS, -1 do
    removed = removed + redis.call('HDEL', seen_prefix .. b .. ':' .. shard, field)
  end
end
return removed
""".replace("BUCKETS", str(BUCKETS_PER_TTL))


async def forget(redis: RedisClient, keys: Keys, ttl_s: int, numbers: Sequence[str]) -> int:
    """Drop ``numbers`` from the dedupe memory, so they are sent again when they next
    arrive (``ackworker dead replay``); returns how many were remembered."""
    if not numbers or ttl_s <= 0:
        return 0
    script = register_script(redis, _FORGET)
    args: list[str | int | bytes] = [keys.seen_prefix, bucket_s(ttl_s), digests(numbers)]
    # A key of the prefix routes the call to the node holding its slot (Redis Cluster).
    return int(await script(keys=[keys.inflight], args=args))


@dataclass(frozen=True, slots=True)
class DedupeConfig:
    """``ttl_s``: how long confirmed numbers are remembered (0 = not at all);
    ``lease_ms``: how long an in-flight lease lasts if its holder never settles."""

    ttl_s: int
    lease_ms: int


class Dedupe:
    """Reserves numbers before sending them."""

    def __init__(self, redis: RedisClient, keys: Keys, consumer: str, config: DedupeConfig) -> None:
        self._keys = keys
        self._consumer = consumer
        self._config = config
        self._script = register_script(redis, _RESERVE)

    async def reserve(
        self, numbers: Sequence[str], digests: bytes, batch_id: str
    ) -> list[Reservation]:
        """Decide for each number whether to send it; leases the ones to send.

        ``digests`` are the numbers' digests back to back (:func:`worker.ids.digests`).
        A lease reads ``<consumer>|<batch_id>|<deadline ms>``: only this consumer releases or
        extends it, and only this batch's own (retried) reservation may take it again.
        """
        args: list[str | bytes | int] = [
            self._keys.seen_prefix,
            bucket_s(self._config.ttl_s),
            self._config.ttl_s,
            f"{self._consumer}|{batch_id}",
            self._config.lease_ms,
            join_numbers(numbers),
            digests,
        ]
        statuses: bytes = await self._script(keys=[self._keys.inflight], args=args)
        return [_STATUS[s] for s in statuses]
