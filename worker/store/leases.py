"""Keeping held entries ours: nobody claims what this worker is still working on.

An entry stays pending in this consumer's PEL from the moment it is read until it settles.
A batch that retries, waits at the closed send gate (refused credentials, a skewed clock) or
waits for a busy number can hold entries longer than ``claim_idle_ms``; without care another
replica (or this one's own claim loop) would then claim and send them a second time, and an
outage longer than ``max_attempts`` claim periods would dead-letter them as
``redelivered_too_often``. So every ``claim_idle_ms / 3`` the renewer resets the idle time of
every held entry that is still ours (``XCLAIM ... JUSTID``, which does not count as a
delivery) and extends the in-flight leases this consumer holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.clock import SYSTEM_CLOCK, Clock
from worker.entries import Entry, Holdings
from worker.errors import clip
from worker.ids import join_numbers
from worker.logs import get_logger
from worker.store.connection import REDIS_ERRORS, RedisClient, register_script
from worker.store.keys import Keys

log = get_logger("keeper")

_TOUCH = """
local group, consumer, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = {}
for id in string.gmatch(ARGV[4], '[^\\n]+') do
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if p[1] and p[1][2] == consumer then mine[#mine + 1] = id end
end
for i = 1, #mine, 500 do
  -- unpack() expands only as the last argument, so JUSTID goes into the table first.
  local args = {KEYS[1], group, consumer, 0}
  for j = i, math.min(i + 499, #mine) do args[#args + 1] = mine[j] end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
local deadline = '|' .. (now_ms + lease_ms)
local batches = {}
for batch in string.gmatch(ARGV[6], '[^\\n]+') do batches[#batches + 1] = batch end
local i = 0
for number in string.gmatch(ARGV[5], '[^\\n]+') do
  i = i + 1
  -- Only the lease of a batch this worker still holds: a lease left by a batch it gave up
  -- on must expire, or entries claimed back would wait for it forever.
  local owner = consumer .. '|' .. batches[i]
  local held = redis.call('HGET', KEYS[2], number)
  if held and string.match(held, '^(.*)|%d+$') == owner then
    redis.call('HSET', KEYS[2], number, owner .. deadline)
  end
end
return #mine
"""


class LeaseRenewer:
    """Refreshes held entries and leases; ``lease_ms`` is how long a refreshed lease lasts."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        consumer: str,
        holdings: Holdings,
        *,
        claim_idle_ms: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._keys = keys
        self._consumer = consumer
        self._holdings = holdings
        self._claim_idle_ms = claim_idle_ms
        self._clock = clock
        self._script = register_script(redis, _TOUCH)

    @property
    def interval_s(self) -> float:
        """Seconds between refreshes: a third of the claim idle time."""
        return self._claim_idle_ms / 3000.0

    async def run(self) -> None:
        """Refresh forever (until cancelled with the worker's task group)."""
        while True:
            await self._clock.sleep(self.interval_s)
            entries = self._holdings.held()
            if not entries:
                continue
            try:
                kept = await self.touch(entries)
            except REDIS_ERRORS as exc:
                log.warning("keeper.failed", error=clip(str(exc)), held=len(entries))
            else:
                log.debug("keeper.touched", held=len(entries), kept=kept)

    async def touch(self, entries: Sequence[Entry]) -> int:
        """Reset the idle time of ``entries`` still pending on this consumer and extend the
        leases their batches hold; returns how many entries were still ours."""
        leases = {e.number: e.lease for e in entries if e.lease is not None}
        args: list[str | bytes | int] = [
            self._keys.group,
            self._consumer,
            self._claim_idle_ms,
            b"\n".join(e.entry_id for e in entries),
            join_numbers(leases),
            join_numbers(leases.values()),
        ]
        kept = await self._script(keys=[self._keys.tasks, self._keys.inflight], args=args)
        return int(kept)
