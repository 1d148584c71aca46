"""Settling: one atomic Lua call writes an outcome and removes its entries from the stream.

Within one script run: XACK and XDEL the entries (so ``XLEN <prefix>:tasks`` is the backlog),
remember confirmed numbers in the dedupe memory, release their in-flight leases, and append
dead letters and the reconcile record. Nothing is acknowledged in Redis before its outcome is
written, and nothing is written without acknowledging.

Handing back moves entries that were read but never sent to the tail of the stream, as new
entries, and acknowledges the originals in the same script: other consumers read them with
``>`` at once instead of waiting ``claim_idle_ms`` to claim them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import orjson

from worker.clock import Clock
from worker.entries import DEFAULT_ACCOUNT, Entry
from worker.errors import clip
from worker.ids import join_numbers
from worker.logs import get_logger
from worker.retry import redis_backoff_s
from worker.store.connection import REDIS_ERRORS, RedisClient, register_script
from worker.store.dedupe import bucket_s
from worker.store.keys import Keys

log = get_logger("settle")

SETTLE_DEADLINE_S = 10.0
# Short waits: a settle that waited 5 s would use half its deadline on one wait.
SETTLE_BACKOFF_CAP_S = 2.0

_SETTLE = """
local group, seen_prefix = ARGV[1], ARGV[2]
local bucket_len, ttl_s, consumer = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[9]
local function split(blob)
  local items = {}
  for item in string.gmatch(blob, '[^\\n]+') do items[#items + 1] = item end
  return items
end
-- Chunks keep every call far below Lua's unpack limit (about 8000 values): duplicates ride
-- along in a batch, so one batch may carry thousands of entries.
local ids = split(ARGV[5])
for i = 1, #ids, 1000 do
  local last = math.min(i + 999, #ids)
  redis.call('XACK', KEYS[1], group, unpack(ids, i, last))
  redis.call('XDEL', KEYS[1], unpack(ids, i, last))
end
local digests = ARGV[6]
if #digests > 0 and ttl_s > 0 then
  local now = tonumber(redis.call('TIME')[1])
  local bucket = math.floor(now / bucket_len)
  local expire_at = (bucket + 1) * bucket_len + ttl_s
  local expiring = {}
  for j = 1, #digests, 12 do
    local shard = (string.byte(digests, j) * 256 + string.byte(digests, j + 1)) % 4096
    local key = seen_prefix .. bucket .. ':' .. shard
    redis.call('HSET', key, string.sub(digests, j + 2, j + 11), '1')
    if not expiring[key] then
      expiring[key] = true
      redis.call('EXPIREAT', key, expire_at)
    end
  end
end
-- Release only leases this consumer holds: one that expired and was taken by another
-- replica belongs to that replica's request.
local mine = consumer .. '|'
for _, number in ipairs(split(ARGV[7])) do
  local held = redis.call('HGET', KEYS[4], number)
  if held and string.sub(held, 1, #mine) == mine then redis.call('HDEL', KEYS[4], number) end
end
local n_dead = tonumber(ARGV[8])
for j = 10, 9 + n_dead do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(ARGV[j])))
end
for j = 10 + n_dead, #ARGV do
  redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(ARGV[j])))
end
return 1
"""

_HAND_BACK = """
local group, consumer = ARGV[1], ARGV[2]
local moved = 0
for j = 3, #ARGV, 3 do
  -- Only entries still pending on this consumer: one claimed away meanwhile is another's.
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[j], ARGV[j], 1)
  if p[1] and p[1][2] == consumer then
    local fields = cjson.decode(ARGV[j + 1])
    redis.call('XADD', KEYS[1], '*', unpack(fields))
    redis.call('XACK', KEYS[1], group, ARGV[j])
    redis.call('XDEL', KEYS[1], ARGV[j])
    -- Release only the lease of this entry's own batch ('consumer|batch|'): a duplicate of a
    -- number another batch of ours is sending must leave that batch's lease alone.
    local lease = ARGV[j + 2]
    if lease ~= '' then
      local held = redis.call('HGET', KEYS[2], fields[2])
      if held and string.sub(held, 1, #lease) == lease then
        redis.call('HDEL', KEYS[2], fields[2])
      end
    end
    moved = moved + 1
  end
end
return moved
"""


def _flat(record: Mapping[str, str]) -> bytes:
    # A flat [k, v, k, v] list keeps the field order an operator reads in XRANGE.
    return orjson.dumps([x for kv in record.items() for x in kv])


@dataclass(slots=True)
class Settlement:
    """Everything one settle call writes."""

    ack: list[bytes] = field(default_factory=list)
    confirmed: bytes = b""  # digests of the confirmed numbers (worker.ids.digests)
    release: list[str] = field(default_factory=list)
    dead: list[dict[str, str]] = field(default_factory=list)
    reconcile: list[dict[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ack or self.release or self.dead or self.reconcile)


class Settler:
    """Writes settlements atomically."""

    def __init__(self, redis: RedisClient, keys: Keys, *, dedupe_ttl_s: int, consumer: str) -> None:
        self._keys = keys
        self._consumer = consumer
        self._ttl_s = dedupe_ttl_s
        self._settle = register_script(redis, _SETTLE)
        self._hand_back = register_script(redis, _HAND_BACK)

    async def settle(self, s: Settlement) -> None:
        """Apply ``s`` in one atomic script call."""
        args: list[bytes | str | int] = [
            self._keys.group,
            self._keys.seen_prefix,
            bucket_s(self._ttl_s),
            self._ttl_s,
            b"\n".join(s.ack),
            s.confirmed,
            join_numbers(s.release),
            len(s.dead),
            self._consumer,
            *map(_flat, s.dead),
            *map(_flat, s.reconcile),
        ]
        k = self._keys
        await self._settle(keys=[k.tasks, k.dead, k.reconcile, k.inflight], args=args)

    async def settle_shielded(self, s: Settlement, clock: Clock, entries: int) -> None:
        """Apply ``s``, retrying while Redis is away, shielded from cancellation.

        The API has answered: losing this write would turn confirmed numbers into a false
        shortfall when the entries are claimed and sent again. Bounded by SETTLE_DEADLINE_S;
        if Redis stays away that long the entries stay pending and are claimed later.
        """
        with anyio.move_on_after(SETTLE_DEADLINE_S, shield=True) as scope:
            for retry in itertools.count(1):
                try:
                    await self.settle(s)
                    break
                except REDIS_ERRORS as exc:
                    delay = redis_backoff_s(retry, cap_s=SETTLE_BACKOFF_CAP_S)
                    log.warning("settle.retry", error=clip(str(exc)), retry_in_s=delay)
                    await clock.sleep(delay)
        if scope.cancelled_caught:
            log.error("settle.failed", entries=entries, deadline_s=SETTLE_DEADLINE_S)

    async def hand_back(self, entries: Sequence[Entry]) -> int:
        """Re-queue unsent entries still pending on this consumer at the stream's tail,
        acknowledge the originals and release the leases their own batches took (an entry
        never reserved releases none); returns how many moved."""
        if not entries:
            return 0
        args: list[bytes | str] = [self._keys.group, self._consumer]
        for e in entries:
            fields = {"id": e.number}
            if e.task_no:
                fields["task_no"] = e.task_no
            if e.domain:
                fields["domain"] = e.domain
            if e.account != DEFAULT_ACCOUNT:
                fields["account"] = e.account
            lease = f"{self._consumer}|{e.lease}|" if e.lease else ""
            args += (e.entry_id, _flat(fields), lease)
        keys = [self._keys.tasks, self._keys.inflight]
        moved = await self._hand_back(keys=keys, args=args)
        return int(moved)
