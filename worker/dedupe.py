"""Dedupe memory and in-flight leases, shared by every replica through Redis.

A confirmed number is remembered as a 10-byte field in a small hash
``<prefix>:seen:<bucket>:<shard>``: 4096 shards per time bucket keep each hash small enough
for Redis's compact listpack encoding (about 16 bytes per number instead of ~90 for a key or
set member per number). Buckets are ``dedupe_ttl_s / 4`` long and expire ``dedupe_ttl_s``
after they end, so a number is remembered for between 1 and 1.25 times the TTL, and a check
looks at five buckets.

A number being sent holds a lease in ``<prefix>:inflight`` (``consumer|deadline_ms``) so the
same number arriving on another replica, or twice on this one, is not sent twice at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from redis.asyncio import Redis

from worker.keys import Keys

SHARDS = 4096
BUCKETS_PER_TTL = 4


class Reservation(IntEnum):
    """What :meth:`Dedupe.reserve` decided for one number."""

    GO = 0
    """Leased to this consumer: send it."""
    CONFIRMED = 1
    """Confirmed within the TTL: settle as duplicate without an API call."""
    BUSY = 2
    """Leased by a request in flight: decide again once that request has settled."""


def digest(number: str) -> tuple[str, bytes]:
    """``(shard, field)`` of a number in the dedupe memory; 92 bits of BLAKE2b in all."""
    d = hashlib.blake2b(number.encode(), digest_size=12).digest()
    return str(int.from_bytes(d[:2], "big") % SHARDS), d[2:]


def bucket_s(ttl_s: int) -> int:
    """Length of one dedupe time bucket in seconds."""
    return max(1, -(-ttl_s // BUCKETS_PER_TTL))


_RESERVE = """
local seen_prefix, bucket_s, ttl_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local consumer, lease_ms = ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = math.floor(tonumber(t[1]) / bucket_s)
local lease = consumer .. '|' .. (now_ms + lease_ms)
local out = {}
for i = 6, #ARGV, 3 do
  local number, shard, field = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local status = 0
  if ttl_s > 0 then
    for b = current, current - 4, -1 do
      if redis.call('HEXISTS', seen_prefix .. b .. ':' .. shard, field) == 1 then
        status = 1
        break
      end
    end
  end
  if status == 0 then
    local held = redis.call('HGET', KEYS[1], number)
    if held then
      local deadline = tonumber(string.match(held, '|(%d+)$')) or 0
      if deadline > now_ms then status = 2 end
    end
    if status == 0 then redis.call('HSET', KEYS[1], number, lease) end
  end
  out[#out + 1] = status
end
return out
"""


@dataclass(frozen=True, slots=True)
class DedupeConfig:
    """``ttl_s``: how long confirmed numbers are remembered (0 = not at all);
    ``lease_ms``: how long an in-flight lease lasts if its holder never settles."""

    ttl_s: int
    lease_ms: int


class Dedupe:
    """Reserves numbers before sending them."""

    def __init__(self, redis: Redis, keys: Keys, consumer: str, config: DedupeConfig) -> None:
        self._keys = keys
        self._consumer = consumer
        self._config = config
        self._script = redis.register_script(_RESERVE)

    async def reserve(self, numbers: Sequence[str]) -> list[Reservation]:
        """Decide for each number whether to send it; leases the ones to send."""
        args: list[str | bytes | int] = [
            self._keys.seen_prefix,
            bucket_s(self._config.ttl_s),
            self._config.ttl_s,
            self._consumer,
            self._config.lease_ms,
        ]
        for number in numbers:
            shard, field = digest(number)
            args += (number, shard, field)
        statuses = await self._script(keys=[self._keys.inflight], args=args)
        return [Reservation(int(s)) for s in statuses]
