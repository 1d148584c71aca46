"""The router: with several accounts configured, each entry moves to its account's stream.

Producers write every entry to ``<prefix>:tasks``. With one account the lanes read it
directly. With several, one stream read in order would let a held-up account (throttled,
paused, refused) stand in front of the others' entries, so the router reads the input stream
and moves each entry, once, to ``<prefix>:tasks:<account>``; each account's lane then reads
its own stream with its own prefetch bound, and is held up only by its own account.

A move is one Lua call per read that, for every entry still pending on this consumer, XADDs it
to the account's stream and then XACKs and XDELs it from the input, atomically, so an entry is
in exactly one of the two streams. Lua does not roll back, so the script first checks that
every account stream it writes is a stream (or missing) and fails, naming the key, before
writing anything: the entries stay pending here, and are moved once the key is mended. The
new entry is written before the original is acknowledged for the same reason. A repeated move
(its reply was lost) finds the moved entries no longer pending and moves nothing. The source
dead-letters what cannot be moved (``invalid_id``, ``unknown_account``,
``redelivered_too_often``) as it reads. Entries read but not yet moved when the router is
stopped hard stay pending on this consumer and are claimed after ``claim_idle_ms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import orjson

from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Entry
from worker.logs import get_logger
from worker.store.connection import REDIS_ERRORS, RedisClient, register_script
from worker.store.keys import Keys
from worker.store.settle_lua import WRONG_TYPE
from worker.store.source import Recovery, StreamSource, ensure_group

log = get_logger("router")

READ_COUNT = 1000  # entries moved per round trip
IDLE_BLOCK_MS = 500  # longest XREADGROUP block, so a stop request is noticed quickly
MOVE_DEADLINE_S = 10.0

# KEYS[1] the input stream, KEYS[2..] the account streams. ARGV[1] the group, ARGV[2] this
# consumer, then per entry: its id, the index in KEYS of its account's stream, its fields as
# a JSON list.
_MOVE = (
    WRONG_TYPE
    + """
local group, consumer, moved = ARGV[1], ARGV[2], 0
local checked = {}
for j = 4, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[j])]
  if not checked[key] then
    checked[key] = true
    local err = wrong_type(key, 'stream')
    if err then return redis.error_reply(err) end
  end
end
for j = 3, #ARGV, 3 do
  -- Only entries still pending on this consumer: one another consumer took over (and may be
  -- moving or sending) is left to it, and one moved already (a repeat) is not pending.
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[j], ARGV[j], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XADD', KEYS[tonumber(ARGV[j + 1])], '*', unpack(cjson.decode(ARGV[j + 2])))
    redis.call('XACK', KEYS[1], group, ARGV[j])
    redis.call('XDEL', KEYS[1], ARGV[j])
    moved = moved + 1
  end
end
return moved
"""
)


class Router:
    """Moves the input stream's entries to their accounts' streams until ``stopping``."""

    def __init__(
        self,
        redis: RedisClient,
        source: StreamSource,
        targets: Mapping[str, str],
        *,
        consumer: str,
        claim_every_ms: int,
        stopping: anyio.Event,
        clock: Clock = SYSTEM_CLOCK,
        idle_s: float | None = None,
    ) -> None:
        """Moves what ``source`` reads to ``targets[entry.account]`` (a stream key).

        ``idle_s`` set: poll without blocking and sleep that long when nothing came (a stream
        that is usually empty holds no connection); unset: block in XREADGROUP.
        """
        self._keys = source.keys
        self._source = source
        self._consumer = consumer
        self._stopping = stopping
        self._clock = clock
        self._claim_every_s = claim_every_ms / 1000.0
        self._idle_s = idle_s
        destinations = list(dict.fromkeys(targets.values()))
        self._streams = [source.keys.tasks, *destinations]
        self._index = {a: destinations.index(key) + 2 for a, key in targets.items()}
        self._script = register_script(redis, _MOVE)
        self._next_claim = 0.0
        self._recovery = Recovery(source, clock)

    async def run(self) -> None:
        """Read, claim and move until ``stopping`` is set."""
        while not self._stopping.is_set():
            try:
                await self._step()
                self._recovery.ok()
            except REDIS_ERRORS as exc:
                await self._recovery.failed(exc)

    async def _step(self) -> None:
        now = self._clock.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._claim_every_s
            await self._move(await self._source.claim_stale(READ_COUNT))
        block_ms = None if self._idle_s is not None else IDLE_BLOCK_MS
        entries = await self._source.read(READ_COUNT, block_ms)
        await self._move(entries)
        if not entries and self._idle_s is not None:
            await self._clock.sleep(self._idle_s)

    async def _move(self, entries: list[Entry]) -> None:
        if not entries:
            return
        # Shielded: a move cut off by a hard stop would leave the read entries pending here
        # for claim_idle_ms instead of on their way.
        with anyio.move_on_after(MOVE_DEADLINE_S, shield=True) as scope:
            moved = await self.move(entries)
            log.debug("router.moved", count=moved)
        if scope.cancelled_caught:
            # Still pending here: claimed again after claim_idle_ms.
            log.warning("router.move_timed_out", count=len(entries), deadline_s=MOVE_DEADLINE_S)

    async def move(self, entries: Sequence[Entry]) -> int:
        """Move ``entries``, read by this consumer, to their accounts' streams in one atomic
        call; returns how many moved (those still pending on this consumer). Raises a Redis
        error, having moved nothing, when an account stream is not a stream."""
        args: list[str | bytes | int] = [self._keys.group, self._consumer]
        for e in entries:
            args += (e.entry_id, self._index[e.account], orjson.dumps(_fields(e)))
        return int(await self._script(keys=self._streams, args=args))


async def orphaned_accounts(redis: RedisClient, keys: Keys, routed: Sequence[str]) -> list[str]:
    """Register the accounts whose streams this worker routes to (none with one account) and
    return the others that have a stream: accounts removed from the config, or all of them for
    a worker that runs one account. Their streams get a group, ready to be drained."""
    if routed:
        added: Any = redis.sadd(keys.accounts, *routed)
        await added
    reply: Any = redis.smembers(keys.accounts)
    used = {m.decode() if isinstance(m, bytes) else str(m) for m in await reply}
    orphans = sorted(used - set(routed))
    for account in orphans:
        await ensure_group(redis, keys.for_account(account))
    if orphans:
        log.warning("router.draining", accounts=orphans)
    return orphans


def _fields(e: Entry) -> list[str]:
    """The entry as the input contract has it, ``account`` kept."""
    fields = ["id", e.number, "account", e.account]
    if e.task_no:
        fields += ["task_no", e.task_no]
    if e.domain:
        fields += ["domain", e.domain]
    return fields
