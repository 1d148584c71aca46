"""The router: with several accounts configured, each entry moves to its account's stream.

Producers write every entry to ``<prefix>:tasks``. With one account the lanes read it
directly. With several, one stream read in order would let a held-up account (throttled,
paused, refused) stand in front of the others' entries, so the router reads the input stream
and moves each entry, once, to ``<prefix>:tasks:<account>``; each account's lane then reads
its own stream with its own prefetch bound, and is held up only by its own account.

A move is one Lua call per read: XADD to the account's stream, XACK and XDEL from the input,
for every entry, atomically, so an entry is in exactly one of the two streams. The source
dead-letters what cannot be moved (``invalid_id``, ``unknown_account``,
``redelivered_too_often``) as it reads. Entries read but not yet moved when the router is
stopped hard stay pending on this consumer and are claimed after ``claim_idle_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import orjson

from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Entry
from worker.keys import Keys
from worker.logs import get_logger
from worker.redis_conn import REDIS_ERRORS, RedisClient, register_script
from worker.source import Recovery, StreamSource

log = get_logger("router")

READ_COUNT = 1000  # entries moved per round trip
IDLE_BLOCK_MS = 500  # longest XREADGROUP block, so a stop request is noticed quickly
MOVE_DEADLINE_S = 10.0

# KEYS[1] the input stream, KEYS[2..] the account streams. ARGV[1] the group, then per entry:
# its id, the index in KEYS of its account's stream, its fields as a JSON list.
_MOVE = """
local group, moved = ARGV[1], 0
for j = 2, #ARGV, 3 do
  -- 0 when another consumer took the entry over and moved it already: never twice.
  if redis.call('XACK', KEYS[1], group, ARGV[j]) == 1 then
    redis.call('XADD', KEYS[tonumber(ARGV[j + 1])], '*', unpack(cjson.decode(ARGV[j + 2])))
    redis.call('XDEL', KEYS[1], ARGV[j])
    moved = moved + 1
  end
end
return moved
"""


class Router:
    """Moves the input stream's entries to their accounts' streams until ``stopping``."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        accounts: Sequence[str],
        source: StreamSource,
        *,
        claim_every_ms: int,
        stopping: anyio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._keys = keys
        self._source = source
        self._stopping = stopping
        self._clock = clock
        self._claim_every_s = claim_every_ms / 1000.0
        self._streams = [keys.input] + [keys.account_stream(a) for a in accounts]
        self._index = {account: i + 2 for i, account in enumerate(accounts)}
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
        await self._move(await self._source.read(READ_COUNT, IDLE_BLOCK_MS))

    async def _move(self, entries: list[Entry]) -> None:
        if not entries:
            return
        args: list[str | bytes | int] = [self._keys.group]
        for e in entries:
            args += (e.entry_id, self._index[e.account], orjson.dumps(_fields(e)))
        # Shielded: a move cut off by a hard stop would leave the read entries pending here
        # for claim_idle_ms instead of on their way.
        with anyio.move_on_after(MOVE_DEADLINE_S, shield=True):
            moved = await self._script(keys=self._streams, args=args)
            log.debug("router.moved", count=int(moved))


def _fields(e: Entry) -> list[str]:
    """The entry as the input contract has it, ``account`` kept."""
    fields = ["id", e.number, "account", e.account]
    if e.task_no:
        fields += ["task_no", e.task_no]
    if e.domain:
        fields += ["domain", e.domain]
    return fields
