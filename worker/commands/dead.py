"""``ackworker dead list | replay | purge``: looking at dead letters, re-queueing them, trimming.

- **list** reads ``<prefix>:dead`` oldest first, filtered by reason.
- **replay** moves matching entries back to ``<prefix>:tasks``: per page, one Lua call
  re-checks that each entry is still there, appends ``id`` (with ``task_no``, ``domain``
  and ``account`` when present) to the task stream and deletes the dead letter, so an entry
  is moved once even when two operators replay at the same time. Only entries that existed
  when the replay started are considered: numbers dead-lettered again while it runs are not
  replayed twice.
  ``invalid_id`` entries have no number to send and are skipped.
- **purge** deletes dead letters older than a duration with ``XTRIM MINID``: stream ids carry
  the millisecond they were added (Redis's clock), so one atomic command does it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.clock import iso_utc
from worker.commands.common import (
    Row,
    StreamScan,
    configure_command_logging,
    print_json,
    render_table,
    run_with_redis,
    tally_stream,
)
from worker.config.settings import Settings
from worker.entries import is_valid_id
from worker.errors import ConfigError
from worker.logs import get_logger
from worker.reasons import REASONS
from worker.store.connection import RedisClient, redis_now_ms, register_script
from worker.store.dedupe import forget
from worker.store.keys import Keys

log = get_logger("dead")

_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_ERROR_SHOWN = 60

# KEYS: dead, tasks. ARGV: dead entry ids. Returns {dead id, new task entry id, ...} for each
# entry moved; an entry already gone (replayed or purged meanwhile) is left out.
_REPLAY = """
local moved = {}
for j = 1, #ARGV do
  local rows = redis.call('XRANGE', KEYS[1], ARGV[j], ARGV[j])
  if #rows == 1 then
    local f, out = rows[1][2], {}
    for i = 1, #f, 2 do
      local name = f[i]
      if (name == 'id' or name == 'task_no' or name == 'domain' or name == 'account')
          and f[i + 1] ~= '' then
        out[#out + 1] = name
        out[#out + 1] = f[i + 1]
      end
    end
    if out[1] == 'id' then
      moved[#moved + 1] = ARGV[j]
      moved[#moved + 1] = redis.call('XADD', KEYS[2], '*', unpack(out))
      redis.call('XDEL', KEYS[1], ARGV[j])
    end
  end
end
return moved
"""


def check_reason(reason: str | None) -> str | None:
    """``--reason``: one of :data:`REASONS` (or not given)."""
    if reason is None or reason in REASONS:
        return reason
    raise ConfigError(f"--reason {reason!r}: not a dead-letter reason; one of {', '.join(REASONS)}")


def parse_duration_ms(text: str) -> int:
    """``--older-than``: a whole number and a unit, ``30m``, ``12h``, ``7d`` (also s, w)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(
            f"--older-than {text!r}: expected a positive whole number and a unit "
            "s, m, h, d or w (30m, 12h, 7d)"
        )
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _check_ids(ids: Sequence[str]) -> frozenset[str]:
    for number in ids:
        if not is_valid_id(number):
            raise ConfigError(
                f"--id {number[:80]!r}: not a task-detail number (1 to 64 letters, digits, "
                "'-' or '_')"
            )
    return frozenset(ids)


def _matches(fields: dict[str, str], reason: str | None, ids: Collection[str]) -> bool:
    if reason is not None and fields.get("reason") != reason:
        return False
    return not ids or fields.get("id", "") in ids


# --- list --------------------------------------------------------------------------------


async def list_dead(
    redis: RedisClient, keys: Keys, reason: str | None, limit: int
) -> tuple[list[Row], bool]:
    """The oldest ``limit`` dead letters with ``reason``, and whether more match."""
    found: list[Row] = []
    async for page in StreamScan(redis, keys.dead).pages():
        found += [row for row in page if _matches(row[1], reason, ())]
        if len(found) > limit:
            return found[:limit], True
    return found, False


def _dead_json(row: Row) -> dict[str, Any]:
    entry_id, fields = row
    shown: dict[str, Any] = {"entry_id": entry_id, **fields}
    if fields.get("attempts", "").isdigit():
        shown["attempts"] = int(fields["attempts"])
    return shown


def _dead_table(rows: list[Row]) -> str:
    headers = ("entry", "at", "reason", "id", "attempts", "error")
    cells = [
        (
            entry_id,
            f.get("at", ""),
            f.get("reason", ""),
            f.get("id") or "-",
            f.get("attempts", ""),
            f.get("error", "")[:_ERROR_SHOWN],
        )
        for entry_id, f in rows
    ]
    return render_table(headers, cells)


def dead_list_command(settings: Settings, *, reason: str | None, limit: int, as_json: bool) -> int:
    """``ackworker dead list [--reason R] [--limit N] [--json]``."""
    reason = check_reason(reason)

    async def main(redis: RedisClient, keys: Keys) -> int:
        rows, more = await list_dead(redis, keys, reason, limit)
        if as_json:
            print_json({"entries": [_dead_json(r) for r in rows], "more": more})
            return 0
        print(_dead_table(rows) if rows else "no dead letters match")
        if more:
            print(f"(the oldest {limit} shown; more match: raise --limit)")
        return 0

    return run_with_redis(settings, main)


# --- replay ------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, dry, would do)."""

    moved: int = 0
    skipped_invalid: int = 0
    skipped_gone: int = 0
    found_ids: set[str] = field(default_factory=set)
    capped: bool = False


class Replayer:
    """Moves matching dead letters back to the task stream, one atomic call per page."""

    def __init__(self, redis: RedisClient, keys: Keys, *, dry_run: bool, dedupe_ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._dry_run = dry_run
        self._ttl_s = dedupe_ttl_s
        self._script = register_script(redis, _REPLAY)
        self.report = ReplayReport()

    async def run(self, reason: str | None, ids: frozenset[str]) -> ReplayReport:
        """Replay every entry matching ``reason`` and ``ids`` that exists now."""
        last: Any = await self._redis.xrevrange(self._keys.dead, "+", "-", count=1)
        if not last:
            return self.report
        scan = StreamScan(self._redis, self._keys.dead, end=last[0][0].decode())
        async for page in scan.pages():
            await self._page([row for row in page if _matches(row[1], reason, ids)])
        self.report.capped = scan.capped
        return self.report

    async def _page(self, rows: list[Row]) -> None:
        movable = []
        for entry_id, fields in rows:
            self.report.found_ids.add(fields.get("id", ""))
            if fields.get("reason") == "invalid_id" or not is_valid_id(fields.get("id", "")):
                self.report.skipped_invalid += 1
            else:
                movable.append((entry_id, fields))
        if self._dry_run or not movable:
            self.report.moved += len(movable)
            return
        # Dead-lettered numbers are remembered so that late duplicates cost no request; a
        # replay means to send them again. Forgotten first: a replay cut short after this
        # leaves the dead letter in place, only no longer remembered.
        numbers = [fields["id"] for _, fields in movable]
        await forget(self._redis, self._keys, self._ttl_s, numbers)
        reply: Any = await self._script(
            keys=[self._keys.dead, self._keys.tasks], args=[e for e, _ in movable]
        )
        moved = {reply[j].decode(): reply[j + 1].decode() for j in range(0, len(reply), 2)}
        for entry_id, fields in movable:
            if entry_id in moved:
                log.info(
                    "dead.replayed",
                    id=fields["id"],
                    reason=fields.get("reason", ""),
                    source=entry_id,
                    entry=moved[entry_id],
                )
        self.report.moved += len(moved)
        self.report.skipped_gone += len(movable) - len(moved)


def _replay_summary(report: ReplayReport, keys: Keys, ids: frozenset[str], dry: bool) -> str:
    verb = "would replay" if dry else "replayed"
    lines = [
        f"{verb} {report.moved} to {keys.tasks}; skipped {report.skipped_invalid} without a "
        f"valid id (invalid_id), {report.skipped_gone} already gone"
    ]
    missing = sorted(ids - report.found_ids)
    if missing:
        lines.append(f"no matching dead letter for: {', '.join(missing)}")
    if report.capped:
        lines.append("stopped after the scan limit; run again for the rest")
    return "\n".join(lines)


def dead_replay_command(
    settings: Settings, *, reason: str | None, ids: Sequence[str], dry_run: bool
) -> int:
    """``ackworker dead replay [--reason R] [--id ID ...] [--dry-run]``."""
    reason = check_reason(reason)
    wanted = _check_ids(ids)
    configure_command_logging(settings)

    async def main(redis: RedisClient, keys: Keys) -> int:
        report = await Replayer(
            redis, keys, dry_run=dry_run, dedupe_ttl_s=settings.dedupe_ttl_s
        ).run(reason, wanted)
        print(_replay_summary(report, keys, wanted, dry_run))
        return 0

    return run_with_redis(settings, main)


# --- purge -------------------------------------------------------------------------------


def dead_purge_command(settings: Settings, *, older_than: str, yes: bool) -> int:
    """``ackworker dead purge --older-than DURATION [--yes]``: without ``--yes``, exit 2
    after saying how many would go."""
    age_ms = parse_duration_ms(older_than)
    configure_command_logging(settings)

    async def main(redis: RedisClient, keys: Keys) -> int:
        cutoff_ms = await redis_now_ms(redis, keys.dead) - age_ms
        before = iso_utc_ms(cutoff_ms)
        if not yes:
            tally = await tally_stream(redis, keys.dead, "reason", end=f"({cutoff_ms}-0")
            count = sum(tally.by_value.values())
            print(
                f"would purge {count} dead letter(s) added before {before} "
                f"(older than {older_than}); run again with --yes to purge them"
            )
            return 2
        # Exact, not '~': an approximate trim would leave some of what was asked for.
        purged = int(await redis.xtrim(keys.dead, minid=f"{cutoff_ms}-0", approximate=False))
        log.info("dead.purged", count=purged, before=before)
        print(f"purged {purged} dead letter(s) added before {before}")
        return 0

    return run_with_redis(settings, main)


def iso_utc_ms(at_ms: int) -> str:
    """A Redis-clock millisecond timestamp as ISO 8601 UTC (to the second)."""
    return iso_utc(datetime.fromtimestamp(at_ms / 1000, UTC))
