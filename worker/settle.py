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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from worker.dedupe import bucket_s
from worker.digest import join_numbers
from worker.entries import Entry
from worker.keys import Keys
from worker.redis_conn import RedisClient, register_script

_SETTLE = """
local group, seen_prefix = ARGV[1], ARGV[2]
local bucket_len, ttl_s = tonumber(ARGV[3]), tonumber(ARGV[4])
local function split(blob)
  local items = {}
  for item in string.gmatch(blob, '[^\\n]+') do items[#items + 1] = item end
  return items
end
local ids = split(ARGV[5])
if #ids > 0 then
  redis.call('XACK', KEYS[1], group, unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
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
local release = split(ARGV[7])
if #release > 0 then redis.call('HDEL', KEYS[4], unpack(release)) end
local n_dead = tonumber(ARGV[8])
for j = 9, 8 + n_dead do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(ARGV[j])))
end
for j = 9 + n_dead, #ARGV do
  redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(ARGV[j])))
end
return 1
"""

_HAND_BACK = """
local group = ARGV[1]
for j = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[j + 1])))
  redis.call('XACK', KEYS[1], group, ARGV[j])
  redis.call('XDEL', KEYS[1], ARGV[j])
end
return (#ARGV - 1) / 2
"""


def _flat(record: Mapping[str, str]) -> bytes:
    # A flat [k, v, k, v] list keeps the field order an operator reads in XRANGE.
    return orjson.dumps([x for kv in record.items() for x in kv])


@dataclass(slots=True)
class Settlement:
    """Everything one settle call writes."""

    ack: list[bytes] = field(default_factory=list)
    confirmed: bytes = b""  # digests of the confirmed numbers (worker.digest.digests)
    release: list[str] = field(default_factory=list)
    dead: list[dict[str, str]] = field(default_factory=list)
    reconcile: list[dict[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ack or self.release or self.dead or self.reconcile)


class Settler:
    """Writes settlements atomically."""

    def __init__(self, redis: RedisClient, keys: Keys, *, dedupe_ttl_s: int) -> None:
        self._keys = keys
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
            *map(_flat, s.dead),
            *map(_flat, s.reconcile),
        ]
        k = self._keys
        await self._settle(keys=[k.tasks, k.dead, k.reconcile, k.inflight], args=args)

    async def hand_back(self, entries: Sequence[Entry]) -> int:
        """Re-queue unsent entries at the stream's tail and acknowledge the originals."""
        if not entries:
            return 0
        args: list[bytes | str] = [self._keys.group]
        for e in entries:
            fields = {"id": e.number}
            if e.task_no:
                fields["task_no"] = e.task_no
            if e.domain:
                fields["domain"] = e.domain
            args += (e.entry_id, _flat(fields))
        moved = await self._hand_back(keys=[self._keys.tasks], args=args)
        return int(moved)
