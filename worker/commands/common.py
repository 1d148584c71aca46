"""What the operator commands (``status``, ``health``, ``dead``, ``reconcile``) share.

Each command opens a short-lived client through :func:`worker.config.topology.open_redis`, reads or
changes Redis in bounded steps and closes the client. A Redis that cannot be reached is one
line on stderr and exit code 1 (the command could not look); a Redis that refuses the login
is a setting problem, a :class:`~worker.errors.ConfigError` and exit code 2.

Streams are read in pages of :data:`PAGE` entries and at most :data:`SCAN_CAP` entries per
command, so no command holds Redis or its own memory for long however large a stream grows.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.config.settings import Settings, mask_url_password
from worker.config.topology import keys_for, login_problem, open_redis
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.store.connection import RedisClient, register_script
from worker.store.keys import Keys

PAGE = 1000
SCAN_CAP = 1_000_000
LIMIT_MAX = 100_000

Row = tuple[str, dict[str, str]]
CommandMain = Callable[[RedisClient, Keys], Awaitable[int]]

# One page of a stream, tallied inside Redis: the reply is a few counts instead of a
# thousand entries. Reply: {entries, last id, pairs of (value of ARGV[4], count)..., then
# the sums of the fields named in ARGV[5..]}.
_TALLY = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local by, values, sums = {}, {}, {}
for j = 5, #ARGV do sums[ARGV[j]] = 0 end
for _, row in ipairs(rows) do
  local f, value = row[2], ''
  for i = 1, #f, 2 do
    if f[i] == ARGV[4] then value = f[i + 1] end
    if sums[f[i]] ~= nil then sums[f[i]] = sums[f[i]] + (tonumber(f[i + 1]) or 0) end
  end
  if by[value] == nil then by[value] = 0; values[#values + 1] = value end
  by[value] = by[value] + 1
end
local out = {tostring(#rows), ''}
if #rows > 0 then out[2] = rows[#rows][1] end
out[3] = tostring(#values)
for _, value in ipairs(values) do
  out[#out + 1] = value
  out[#out + 1] = string.format('%d', by[value])
end
for j = 5, #ARGV do out[#out + 1] = string.format('%d', sums[ARGV[j]]) end
return out
"""


def run_with_redis(settings: Settings, main: CommandMain) -> int:
    """Run ``main(redis, keys)`` with a client for ``settings``; its result is the exit code."""

    async def go() -> int:
        redis = open_redis(settings, max_connections=2)
        try:
            return await main(redis, keys_for(settings))
        finally:
            await redis.aclose()

    try:
        return anyio.run(go)
    except (AuthenticationError, AuthorizationError, ResponseError) as exc:
        problem = login_problem(exc)
        if problem is None:
            raise
        raise problem from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        where = mask_url_password(settings.redis_url)
        print(f"ackworker: Redis unreachable at {where}: {exc}", file=sys.stderr)
        return 1


def configure_command_logging(settings: Settings) -> None:
    """Log events of a command (``dead.replayed``...) like the worker's: same format and level."""
    configure_logging(
        level=settings.log_level,
        fmt=settings.log_format,
        secrets=[urlsplit(settings.redis_url).password],
    )


def decode_fields(fields: dict[bytes, bytes] | None) -> dict[str, str]:
    """A stream entry's fields as text; undecodable bytes are shown, never raised."""
    return {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
        for k, v in (fields or {}).items()
    }


@dataclass(slots=True)
class StreamScan:
    """Reads ``key`` from ``start`` to ``end`` (inclusive) in pages, at most ``cap`` entries.

    ``scanned`` counts what was read; ``capped`` is set when the cap stopped the scan early.
    """

    redis: RedisClient
    key: str
    start: str = "-"
    end: str = "+"
    cap: int = SCAN_CAP
    scanned: int = 0
    capped: bool = False

    async def pages(self) -> AsyncIterator[list[Row]]:
        """Pages of decoded ``(entry id, fields)``, oldest first."""
        start = self.start
        while True:
            count = min(PAGE, self.cap - self.scanned)
            if count <= 0:
                self.capped = bool(await self.redis.xrange(self.key, start, self.end, count=1))
                return
            raw: Any = await self.redis.xrange(self.key, start, self.end, count=count)
            rows = [(i.decode(), decode_fields(f)) for i, f in raw]
            if rows:
                self.scanned += len(rows)
                yield rows
            if len(rows) < count:
                return
            start = "(" + rows[-1][0]


@dataclass(slots=True)
class StreamTally:
    """Entries of a stream counted by one field's value, with the sums of numeric fields."""

    by_value: dict[str, int] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=dict)
    scanned: int = 0
    capped: bool = False


async def tally_stream(
    redis: RedisClient, key: str, by: str, sums: Sequence[str] = (), *, end: str = "+"
) -> StreamTally:
    """Count the entries of ``key`` up to ``end`` by field ``by`` and sum ``sums``, in Redis."""
    script = register_script(redis, _TALLY)
    tally = StreamTally(sums=dict.fromkeys(sums, 0))
    start = "-"
    while tally.scanned < SCAN_CAP:
        count = min(PAGE, SCAN_CAP - tally.scanned)
        reply: Any = await script(keys=[key], args=[start, end, count, by, *sums])
        texts = [x.decode("utf-8", "replace") for x in reply]
        read, last, pairs = int(texts[0]), texts[1], int(texts[2])
        tally.scanned += read
        for j in range(3, 3 + 2 * pairs, 2):
            tally.by_value[texts[j]] = tally.by_value.get(texts[j], 0) + int(texts[j + 1])
        for name, value in zip(sums, texts[3 + 2 * pairs :], strict=True):
            tally.sums[name] += int(value)
        if read < count:
            return tally
        start = "(" + last
    tally.capped = bool(await redis.xrange(key, start, end, count=1))
    return tally


def parse_limit(text: str) -> int:
    """``--limit``: a whole number from 1 to :data:`LIMIT_MAX`."""
    if text.isdigit() and 1 <= int(text) <= LIMIT_MAX:
        return int(text)
    raise ConfigError(f"--limit {text!r}: must be a whole number from 1 to {LIMIT_MAX}")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned with two spaces, headers first; trailing spaces trimmed."""
    cells = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)


def print_json(value: object) -> None:
    """Write ``value`` to stdout as indented JSON, keys in the documented order."""
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
