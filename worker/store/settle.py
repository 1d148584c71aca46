"""Settling: one atomic Lua call writes an outcome and removes its entries from the stream.

An outcome is recorded exactly once, however often the call is repeated and whoever else
holds the entries. One script run, in this order:

1. **A repeat answers as the first run did.** Each :class:`Settlement` carries a random
   token; the run stores its reply under ``<prefix>:settled:<token>`` for
   :data:`REPLY_TTL_S`. A call whose reply was lost (redis-py retries it on a dropped
   connection, :meth:`Settler.settle_shielded` for up to 10 s) finds that reply, returns it
   and writes nothing.
2. **Check before writing.** Lua does not roll back a script that fails half-way, so every
   key the run will write is checked first (a stream must be a stream or missing, a hash a
   hash): a wrong type fails the call with an error naming the key, before anything is
   written, and the entries stay pending.
3. **Ownership, all or nothing.** Every entry to acknowledge must still be pending on this
   consumer (one ``XPENDING`` per entry). If one is not (a consumer that stalled past
   ``claim_idle_ms`` lost it to a claim, or it was settled already), the run writes no dead
   letter or reconcile record and acknowledges nothing: the outcomes are left to whoever holds
   the entries (``settle.not_owner``). Even so it remembers the confirmed numbers, which keeps
   the API's answer (the claimer, reserving them, finds them confirmed and settles them as
   duplicates without a request), and releases this settlement's own leases. The ownership
   check is also what makes a repeat harmless once its stored reply has expired: an applied
   settlement's entries are no longer pending. (A settlement with no entry to acknowledge
   has only the stored reply; no caller builds one with outcomes.)
4. **Outcomes first, acknowledgement last:** dead letters and the reconcile record, then the
   dedupe memory, then the leases of the entries' own batches (``consumer|batch|``, never
   another batch's of this consumer), the stored reply, and ``XACK`` + ``XDEL`` last. So at
   any moment an entry is in the stream, or has its outcome.

Handing back moves entries that were read but never sent to the tail of the stream, as new
entries, and acknowledges the originals in the same script (the new entry written first):
other consumers read them with ``>`` at once instead of waiting ``claim_idle_ms`` to claim
them. It moves only entries still pending on this consumer, so a repeat moves nothing again.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Mapping, Sequence
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
from worker.store.settle_lua import HAND_BACK, SETTLE
from worker.totals import Totals

log = get_logger("settle")

SETTLE_DEADLINE_S = 10.0
# Short waits: a settle that waited 5 s would use half its deadline on one wait.
SETTLE_BACKOFF_CAP_S = 2.0
# Far longer than any repeat of one call can come: settle_shielded gives up after
# SETTLE_DEADLINE_S. A repeat after that is still harmless (step 3 of the docstring).
REPLY_TTL_S = 120


def _flat(record: Mapping[str, str]) -> bytes:
    # A flat [k, v, k, v] list keeps the field order an operator reads in XRANGE.
    return orjson.dumps([x for kv in record.items() for x in kv])


def leases_of(entries: Iterable[Entry]) -> dict[str, str]:
    """Number -> the batch whose in-flight lease covers it, for each of ``entries`` that holds
    one: the leases a settlement of ``entries`` releases (:attr:`Settlement.release`)."""
    return {e.number: e.lease for e in entries if e.lease is not None}


@dataclass(slots=True)
class Settlement:
    """Everything one settle call writes. ``release`` maps a number to the batch whose lease
    on it is released (:func:`leases_of`); ``token`` makes a repeat of this settlement's call
    recognisable (see the module docstring)."""

    ack: list[bytes] = field(default_factory=list)
    # Digests (worker.ids.digests) of the numbers dedupe memory keeps, so a late duplicate
    # costs no request: ``confirmed`` ones always (the API's answer is kept even when the
    # entries turned out to be another consumer's), ``decided`` ones (found not listed,
    # dead-lettered) only with the outcome itself.
    confirmed: bytes = b""
    release: dict[str, str] = field(default_factory=dict)
    dead: list[dict[str, str]] = field(default_factory=list)
    reconcile: list[dict[str, str]] = field(default_factory=list)
    decided: bytes = b""
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    def __bool__(self) -> bool:
        return bool(self.ack or self.release or self.dead or self.reconcile)


@dataclass(frozen=True, slots=True)
class SettleResult:
    """What a settle call did. ``not_owned``: entries no longer pending on this consumer; when
    any is, no outcome was written and nothing acknowledged (confirmed numbers are remembered,
    own leases released). ``repeated``: the call repeated one whose reply was lost, and got
    that reply."""

    not_owned: int = 0
    repeated: bool = False

    @property
    def applied(self) -> bool:
        """True when the outcomes were written and the entries acknowledged."""
        return self.not_owned == 0


class Settler:
    """Writes settlements atomically, each at most once. ``totals``, when given, counts the
    entries of settlements that were not ours (:attr:`Totals.not_owned`)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        dedupe_ttl_s: int,
        consumer: str,
        totals: Totals | None = None,
    ) -> None:
        self._keys = keys
        self._consumer = consumer
        self._ttl_s = dedupe_ttl_s
        self._totals = totals
        self._settle = register_script(redis, SETTLE)
        self._hand_back = register_script(redis, HAND_BACK)

    async def settle(self, s: Settlement) -> SettleResult:
        """Apply ``s`` in one atomic script call; calling it again for ``s`` is a no-op.

        Raises a Redis error, with nothing written, when Redis fails or a key to write has
        the wrong type."""
        args: list[bytes | str | int] = [
            self._keys.group,
            self._consumer,
            self._keys.seen_prefix,
            bucket_s(self._ttl_s),
            self._ttl_s,
            REPLY_TTL_S,
            b"\n".join(s.ack),
            s.confirmed,
            join_numbers(s.release),
            join_numbers(s.release.values()),
            len(s.dead),
            s.decided,
            *map(_flat, s.dead),
            *map(_flat, s.reconcile),
        ]
        k = self._keys
        keys = [k.tasks, k.dead, k.reconcile, k.inflight, k.settlement(s.token)]
        reply = await self._settle(keys=keys, args=args)
        result = SettleResult(int(reply[0]), bool(reply[1]))
        if result.not_owned:
            log.warning(
                "settle.not_owner",
                count=result.not_owned,
                entries=len(s.ack),
                outcomes="left to the consumer holding the entries",
            )
            if self._totals is not None:
                self._totals.not_owned += result.not_owned
        return result

    async def settle_shielded(
        self, s: Settlement, clock: Clock, entries: int
    ) -> SettleResult | None:
        """Apply ``s``, retrying while Redis is away, shielded from cancellation; None when
        it could not be written.

        The API has answered: losing this write would turn confirmed numbers into a false
        shortfall when the entries are claimed and sent again. Retrying is safe: a repeat
        writes nothing twice. Bounded by SETTLE_DEADLINE_S; if Redis stays away that long
        the entries stay pending and are claimed later.
        """
        result = None
        with anyio.move_on_after(SETTLE_DEADLINE_S, shield=True) as scope:
            for retry in itertools.count(1):
                try:
                    result = await self.settle(s)
                    break
                except REDIS_ERRORS as exc:
                    delay = redis_backoff_s(retry, cap_s=SETTLE_BACKOFF_CAP_S)
                    log.warning("settle.retry", error=clip(str(exc)), retry_in_s=delay)
                    await clock.sleep(delay)
        if scope.cancelled_caught:
            log.error("settle.failed", entries=entries, deadline_s=SETTLE_DEADLINE_S)
        return result

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
