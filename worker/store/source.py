"""Stream access: the consumer group, reading new entries, and taking over stale ones.

Invalid entries never leave this module: they are dead-lettered with reason ``invalid_id``
as they are read, and entries naming an account that is not configured with reason
``unknown_account``. Entries delivered more than ``max_attempts`` times are dead-lettered with
reason ``redelivered_too_often`` as they are claimed, so a poison entry cannot crash-loop the
fleet.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from worker.clock import SYSTEM_CLOCK, Clock, iso_utc
from worker.entries import DEFAULT_ACCOUNT, Entry, InvalidEntry, RawFields, parse_row
from worker.errors import clip, describe
from worker.logs import get_logger
from worker.reasons import DeadReason
from worker.retry import redis_backoff_s
from worker.store.connection import REDIS_ERRORS, RedisClient
from worker.store.keys import Keys
from worker.store.settle import Settlement, Settler
from worker.totals import Totals

log = get_logger("source")

VANISHED_SHOWN = 20  # ids listed in one item.vanished event; ``count`` has them all


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """``claim_idle_ms``: idle time after which another consumer's entries are taken over;
    ``max_attempts``: deliveries after which an entry is dead-lettered; ``accounts``: the
    account names entries may carry; ``account``: set when the stream is one account's,
    whose entries are that account's whatever they carry."""

    consumer: str
    claim_idle_ms: int
    max_attempts: int
    accounts: frozenset[str] = frozenset({DEFAULT_ACCOUNT})
    account: str | None = None


async def ensure_group(redis: RedisClient, keys: Keys) -> None:
    """Create the stream and the consumer group when missing (idempotent)."""
    try:
        await redis.xgroup_create(keys.tasks, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def invalid_dead_letter(bad: InvalidEntry, at: str) -> dict[str, str]:
    """The dead letter of an entry without a valid id."""
    return {
        "id": "",
        "reason": str(DeadReason.INVALID_ID),
        "error": bad.error,
        "attempts": "0",
        "source": bad.entry_id.decode(),
        "raw": bad.raw,
        "at": at,
    }


def entry_dead_letter(
    entry: Entry, reason: str, error: str, attempts: int, at: str
) -> dict[str, str]:
    """The dead letter of a valid entry (one per number)."""
    record = {
        "id": entry.number,
        "reason": str(reason),  # a DeadReason stored as its plain value
        "error": error,
        "attempts": str(attempts),
        "source": entry.entry_id.decode(),
        "account": entry.account,
    }
    if entry.task_no:
        record["task_no"] = entry.task_no
    if entry.domain:
        record["domain"] = entry.domain
    record["at"] = at
    return record


class StreamSource:
    """Reads and claims entries of ``<prefix>:tasks`` for one consumer."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        settler: Settler,
        config: SourceConfig,
        clock: Clock = SYSTEM_CLOCK,
        totals: Totals | None = None,
    ) -> None:
        self._redis = redis
        self._totals = totals or Totals()
        self._keys = keys
        self._settler = settler
        self._config = config
        self._clock = clock
        self._claim_cursor = "0-0"
        # The per-entry dicts redis-py builds for XREADGROUP replies cost more than the
        # parsing we need; this process only reads the task stream through here.
        redis.set_response_callback("XREADGROUP", _raw_reply)

    @property
    def keys(self) -> Keys:
        """The keys this source reads (``keys.tasks``)."""
        return self._keys

    @property
    def settler(self) -> Settler:
        """The settler this source dead-letters and hands back through."""
        return self._settler

    async def ensure_group(self) -> None:
        """Create the stream and group again (after Redis lost them)."""
        await ensure_group(self._redis, self._keys)

    async def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """Read up to ``count`` new entries, blocking up to ``block_ms`` (None: not at all)."""
        args: list[str | int] = ["XREADGROUP", "GROUP", self._keys.group, self._config.consumer]
        args += ["COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", self._keys.tasks, ">"]
        # Sent as a raw command so redis-py does not turn every entry into a dict first:
        # the reply is [[stream, [[id, [field, value, ...]], ...]]], parsed in parse_row.
        reply: Any = await self._redis.execute_command(*args)
        if not reply:
            return []
        rows: list[tuple[bytes, list[bytes]]] = reply[0][1]
        return await self._accept([(i, f or []) for i, f in rows], {})

    async def claim_stale(self, count: int, held: Container[bytes] = ()) -> list[Entry]:
        """Take back this consumer's orphans, then take over up to ``count`` entries idle
        longer than ``claim_idle_ms`` anywhere.

        Entries in ``held`` are this process's own work in progress (their refresh came
        late): they are left alone, not counted as a redelivery of poison.
        """
        orphans = await self._orphans(count, held)
        if orphans:
            return orphans
        reply: Any = await self._redis.xautoclaim(
            self._keys.tasks,
            self._keys.group,
            self._config.consumer,
            self._config.claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = _as_str(reply[0])
        # Redis 7 adds a third element: ids deleted or trimmed while pending, which it has
        # dropped from the PEL. Redis 6.2 replies with two.
        if len(reply) > 2 and reply[2]:
            self._vanished(reply[2])
        claimed: list[tuple[bytes, RawFields | None]] = [r for r in reply[1] if r[0] not in held]
        if not claimed:
            return []
        deliveries = await self._deliveries([r[0] for r in claimed])
        log.info("item.claimed", count=len(claimed), idle_ms=self._config.claim_idle_ms)
        # An id no longer pending was settled by its owner meanwhile: nothing to do.
        rows = [
            (i, [x for kv in (f or {}).items() for x in kv]) for i, f in claimed if i in deliveries
        ]
        return await self._accept(rows, deliveries)

    async def _orphans(self, count: int, held: Container[bytes]) -> list[Entry]:
        """Entries pending on this consumer that it does not hold: read or claimed with the
        reply lost on the way (redis-py's retry then fetched others), or given up after a
        Redis failure. Redis has counted their delivery already; taking them back with
        ``XCLAIM ... JUSTID`` counts none more, so lost replies cannot push a good number
        into ``redelivered_too_often``. Idle at least ``claim_idle_ms / 2``: held entries are
        refreshed every third of it."""
        k, consumer = self._keys, self._config.consumer
        idle_ms = self._config.claim_idle_ms // 2
        rows: Any = await self._redis.xpending_range(
            k.tasks, k.group, "-", "+", count, consumername=consumer, idle=idle_ms
        )
        lost = {r["message_id"]: int(r["times_delivered"]) for r in rows}
        lost = {i: n for i, n in lost.items() if i not in held}
        if not lost:
            return []
        # min-idle again: one another consumer claimed a moment ago is not taken back.
        taken: Any = await self._redis.xclaim(
            k.tasks, k.group, consumer, idle_ms, list(lost), justid=True
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in taken:
                pipe.xrange(k.tasks, min=entry_id, max=entry_id, count=1)
            found: list[Any] = await pipe.execute()
        log.warning("item.orphans_taken_back", count=len(taken), stream=k.tasks)
        entries = [(r[0][0], [x for kv in r[0][1].items() for x in kv]) for r in found if r]
        return await self._accept(entries, {i: lost[i] for i, _ in entries})

    def _vanished(self, ids: Sequence[bytes | str]) -> None:
        """Pending entries someone deleted or trimmed (XDEL, MAXLEN, a purge): their numbers
        reached no outcome here, so say so once, loudly, instead of letting them go silently.
        Their leases, if any, are unknown (only ids are left) and end with the lease time."""
        self._totals.vanished += len(ids)
        shown = [_as_str(i) for i in ids[:VANISHED_SHOWN]]
        log.warning("item.vanished", count=len(ids), ids=shown, stream=self._keys.tasks)

    async def _deliveries(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        """Delivery count of each claimed id, looked up exactly (one XPENDING per id, in
        one round trip): a range query would also count unrelated entries of ours and cut
        the claimed ones off."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(
                    self._keys.tasks, self._keys.group, min=entry_id, max=entry_id, count=1
                )
            replies: list[Any] = await pipe.execute()
        return {
            entry_id: int(rows[0]["times_delivered"])
            for entry_id, rows in zip(ids, replies, strict=True)
            if rows
        }

    async def _accept(
        self, rows: list[tuple[bytes, list[bytes]]], deliveries: dict[bytes, int]
    ) -> list[Entry]:
        good: list[Entry] = []
        settlement = Settlement()
        at = iso_utc(self._clock.now())
        for entry_id, fields in rows:
            parsed = parse_row(entry_id, fields, deliveries.get(entry_id, 1))
            if self._config.account is not None and isinstance(parsed, Entry):
                parsed.account = self._config.account
            if isinstance(parsed, InvalidEntry):
                settlement.dead.append(invalid_dead_letter(parsed, at))
                settlement.ack.append(entry_id)
                log.warning("item.invalid", source=entry_id.decode(), error=parsed.error)
            elif parsed.account not in self._config.accounts:
                known = ", ".join(sorted(self._config.accounts))
                error = f"account {parsed.account[:64]!r} is not configured (known: {known})"
                reason = DeadReason.UNKNOWN_ACCOUNT
                settlement.dead.append(entry_dead_letter(parsed, reason, error, 0, at))
                settlement.ack.append(entry_id)
                log.warning("item.dead", id=parsed.number, reason=reason)
            elif parsed.delivered > self._config.max_attempts:
                error = f"delivered {parsed.delivered} times, limit {self._config.max_attempts}"
                reason = DeadReason.REDELIVERED_TOO_OFTEN
                record = entry_dead_letter(parsed, reason, error, 0, at)
                record["attempts"] = str(parsed.delivered)
                settlement.dead.append(record)
                settlement.ack.append(entry_id)
                log.warning("item.dead", id=parsed.number, reason=reason)
            else:
                good.append(parsed)
        # Not applied when another consumer claimed one of these entries meanwhile: that one
        # writes their dead letters, and counts them.
        if settlement and (await self._settler.settle(settlement)).applied:
            for record in settlement.dead:
                self._totals.dead[record["reason"]] += 1
        return good


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Recovery:
    """What a loop reading a stream does when Redis fails: recreate a lost stream and group
    at once (NOGROUP: Redis came back without its data), else back off
    (:func:`~worker.retry.redis_backoff_s`), logging ``redis.unavailable``. :meth:`ok` after
    a step that worked."""

    def __init__(self, source: StreamSource, clock: Clock = SYSTEM_CLOCK) -> None:
        self._source = source
        self._clock = clock
        self._failures = 0

    def ok(self) -> None:
        """The last step worked: the next failure backs off from the start."""
        self._failures = 0

    async def failed(self, exc: BaseException) -> None:
        """Recover from ``exc``, a Redis failure of the last step."""
        if "NOGROUP" in str(exc):
            log.warning("redis.group_recreated", error=clip(str(exc)))
            try:
                await self._source.ensure_group()
            except REDIS_ERRORS:
                pass  # still down: back off below
            else:
                return
        self._failures += 1
        delay = redis_backoff_s(self._failures)
        log.warning(
            "redis.unavailable",
            error=describe(exc),
            retry_in_s=delay,
            failures=self._failures,
        )
        await self._clock.sleep(delay)
