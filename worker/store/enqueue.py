"""Putting task-detail numbers on the stream: ``ackworker enqueue`` and :func:`enqueue`.

Upstream pollers written in Python call :func:`enqueue`; everyone else runs
``ackworker enqueue``. Both validate every id before writing any, pipeline their XADDs in
chunks, and create the stream and consumer group when missing.

With ``only_new`` (what ``ackworker poll`` passes) :func:`enqueue` adds only numbers its
:class:`EnqueueMemory` does not hold, and remembers them in the same Lua call as the XADD:
a crash can neither leave a number remembered but not added (lost) nor added but not
remembered (added again by the next poll), and every poller replica shares the memory. The
memory is time-bucketed like the dedupe memory (worker.store.dedupe): 12-byte digests in 4096
small hashes ``<prefix>:polled:<bucket>:<shard>`` per ``ttl_s / 2`` bucket, each expiring
``ttl_s`` after its bucket ends, so a number is remembered for 1 to 1.5 times ``ttl_s``
(about 19 bytes a number) and offered again after that if the service still returns it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from worker.entries import DEFAULT_ACCOUNT, is_valid_id
from worker.errors import AckworkerError
from worker.ids import digests
from worker.store.connection import RedisClient, register_script
from worker.store.dedupe import BUCKETS_PER_TTL, SHARDS, bucket_s
from worker.store.keys import Keys
from worker.store.source import ensure_group

CHUNK = 1000


class InvalidIdError(AckworkerError, ValueError):
    """An id is not 1 to 64 characters of letters, digits, ``-`` and ``_``."""


@dataclass(frozen=True, slots=True)
class Item:
    """A number with its own ``task_no`` and ``domain`` (one ``PollTaskResult`` detail)."""

    number: str
    task_no: str | None = None
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class EnqueueMemory:
    """What was enqueued before, under ``prefix`` (``Keys.polled_prefix``), for ``ttl_s``."""

    prefix: str
    ttl_s: int

    def __post_init__(self) -> None:
        if self.ttl_s < 1:
            raise ValueError(f"an enqueue memory needs a TTL of at least 1 s, got {self.ttl_s}")


_ONLY_NEW_TEMPLATE = """
local prefix, bucket_len, ttl_s, digests = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local current = math.floor(tonumber(redis.call('TIME')[1]) / bucket_len)
local expire_at = (current + 1) * bucket_len + ttl_s
local out, expiring = {}, {}
for i = 5, #ARGV do
  local j = (i - 5) * 12 + 1
  local shard = (string.byte(digests, j) * 256 + string.byte(digests, j + 1)) % SHARDS
  local field = string.sub(digests, j + 2, j + 11)
  local status = '0'
  for b = current, current - BUCKETS, -1 do
    if redis.call('HEXISTS', prefix .. b .. ':' .. shard, field) == 1 then
      status = '1'
      break
    end
  end
  if status == '0' then
    -- The XADD first: a script stopped by an error keeps what it wrote before, and a number
    -- remembered but never added would be skipped for a whole TTL; one added and not
    -- remembered is only enqueued again (a duplicate the workers recognise).
    redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[i])))
    local key = prefix .. current .. ':' .. shard
    redis.call('HSET', key, field, '1')
    if not expiring[key] then
      expiring[key] = true
      redis.call('EXPIREAT', key, expire_at)
    end
  end
  out[#out + 1] = status
end
return table.concat(out)
"""
_ONLY_NEW = _ONLY_NEW_TEMPLATE.replace("SHARDS", str(SHARDS)).replace(
    "BUCKETS", str(BUCKETS_PER_TTL)
)


async def enqueue(
    redis: RedisClient,
    keys: Keys,
    ids: Iterable[str | Item],
    *,
    task_no: str | None = None,
    domain: str | None = None,
    account: str | None = None,
    only_new: EnqueueMemory | None = None,
) -> int:
    """Append ``ids`` to ``<prefix>:tasks``; returns how many entries were added.

    An :class:`Item` carries its own ``task_no`` and ``domain``; a plain id takes the
    call's. With ``only_new``, ids the memory holds are skipped (see the module docstring).
    Raises :class:`InvalidIdError` naming the first bad id before anything is written.
    """
    items = [i if isinstance(i, Item) else Item(i) for i in ids]
    for item in items:
        if not is_valid_id(item.number):
            raise InvalidIdError(
                f"invalid task-detail number {item.number[:80]!r}: "
                "must be 1 to 64 letters, digits, '-' or '_'"
            )
    rows = [_fields(i, task_no, domain, account) for i in items]
    await ensure_group(redis, keys)
    if only_new is not None:
        return await _add_new(redis, keys, items, rows, only_new)
    for start in range(0, len(rows), CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in rows[start : start + CHUNK]:
                pipe.xadd(keys.tasks, fields)  # type: ignore[arg-type]
            await pipe.execute()
    return len(rows)


def _fields(
    item: Item, task_no: str | None, domain: str | None, account: str | None
) -> dict[str, str]:
    fields = {"id": item.number}
    if item.task_no or task_no:
        fields["task_no"] = item.task_no or task_no or ""
    if item.domain or domain:
        fields["domain"] = item.domain or domain or ""
    if account and account != DEFAULT_ACCOUNT:
        fields["account"] = account
    return fields


async def _add_new(
    redis: RedisClient,
    keys: Keys,
    items: Sequence[Item],
    rows: Sequence[dict[str, str]],
    memory: EnqueueMemory,
) -> int:
    script = register_script(redis, _ONLY_NEW)
    added = 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        # Field lists as JSON, as the settle script takes dead letters: values may hold anything.
        flat = [
            orjson.dumps([x for kv in r.items() for x in kv]) for r in rows[start : start + CHUNK]
        ]
        args: list[str | bytes | int] = [
            memory.prefix,
            bucket_s(memory.ttl_s),
            memory.ttl_s,
            digests(i.number for i in chunk),
            *flat,
        ]
        statuses: bytes = await script(keys=[keys.tasks], args=args)
        added += statuses.count(b"0")
    return added
