"""Stream entries: parsing the input contract, and what a batch carries.

An entry of ``<prefix>:tasks`` has field ``id`` (the TaskDetailNo) and may have ``task_no``,
``domain`` and ``account`` (default ``default``); other fields are ignored. Fields arrive as
raw bytes and are never decoded blindly, so an entry of binary garbage is reported, not raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import anyio
import orjson

from worker.ids import digests

DEFAULT_ACCOUNT = "default"
"""The account of an entry without an ``account`` field: the top-level settings' one."""

MAX_ID_LEN = 64
_VALID_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}").fullmatch
_META_MAX = 256
_RAW_MAX_BYTES = 300

RawFields = dict[bytes, bytes]


def is_valid_id(value: str) -> bool:
    """1 to 64 characters of letters, digits, ``-`` and ``_``."""
    return _VALID_ID(value.encode("utf-8", "surrogatepass")) is not None


@dataclass(slots=True)
class Entry:
    """One valid stream entry, held until its outcome is settled."""

    entry_id: bytes
    number: str
    task_no: str | None = None
    domain: str | None = None
    delivered: int = 1
    account: str = DEFAULT_ACCOUNT
    # Set once a request carrying this entry's number may have reached the API; such an
    # entry is never handed back on shutdown, because its outcome is unknown.
    sent: bool = False
    # The batch whose in-flight lease covers this entry's number, once reserved: the lease
    # renewer extends only leases some held entry is covered by.
    lease: str | None = None


@dataclass(frozen=True, slots=True)
class InvalidEntry:
    """An entry without a valid id; dead-lettered with reason ``invalid_id``."""

    entry_id: bytes
    error: str
    raw: str


def _meta(value: bytes | None) -> str | None:
    if not value:
        return None
    return value[:_META_MAX].decode("utf-8", "replace")


def raw_excerpt(fields: RawFields) -> str:
    """The raw fields as JSON, truncated, so an operator can see what arrived."""
    readable = {
        k[:64].decode("utf-8", "backslashreplace"): v[:128].decode("utf-8", "backslashreplace")
        for k, v in list(fields.items())[:16]
    }
    text = orjson.dumps(readable).decode()
    return text if len(text) <= _RAW_MAX_BYTES else text[:_RAW_MAX_BYTES] + "..."


def _describe_bad_id(value: bytes | None) -> str:
    if value is None:
        return "field 'id' is missing"
    if not value:
        return "field 'id' is empty"
    if len(value) > MAX_ID_LEN:
        return f"field 'id' is {len(value)} bytes long, at most {MAX_ID_LEN} allowed"
    return "field 'id' holds characters other than letters, digits, '-' and '_'"


def parse_row(entry_id: bytes, flat: list[bytes], delivered: int = 1) -> Entry | InvalidEntry:
    """Validate one raw stream entry given as Redis sends it: ``[field, value, ...]``.

    This is the per-entry hot path, so it scans the flat reply instead of building a dict.
    When a field repeats, the last value wins, as it would in a dict.
    """
    if len(flat) == 2 and flat[0] == b"id" and _VALID_ID(flat[1]):
        # What nearly every entry is: just the id (the producers' common case).
        return Entry(entry_id, flat[1].decode("ascii"), delivered=delivered)
    value = task_no = domain = account = None
    for i in range(0, len(flat) - 1, 2):
        key = flat[i]
        if key == b"id":
            value = flat[i + 1]
        elif key == b"task_no":
            task_no = flat[i + 1]
        elif key == b"domain":
            domain = flat[i + 1]
        elif key == b"account":
            account = flat[i + 1]
    if value is not None and _VALID_ID(value):
        entry = Entry(entry_id, value.decode("ascii"), _meta(task_no), _meta(domain), delivered)
        if account:
            # Checked against the configured accounts later (reason ``unknown_account``).
            entry.account = account[:_META_MAX].decode("utf-8", "replace")
        return entry
    fields = dict(zip(flat[::2], flat[1::2], strict=False))
    return InvalidEntry(entry_id, _describe_bad_id(value), raw_excerpt(fields))


_batch_counter = 0


def _next_batch_id(consumer: str) -> str:
    global _batch_counter
    _batch_counter += 1
    return f"{consumer}-{_batch_counter}"


@dataclass(slots=True)
class Batch:
    """Entries grouped for one request: each unique number is sent once.

    ``groups`` maps a number to every entry carrying it, so duplicates inside a batch ride
    along with the first and settle with its outcome.
    """

    batch_id: str
    groups: dict[str, list[Entry]] = field(default_factory=dict)
    # Every entry of a batch belongs to this account: batches never mix accounts.
    account: str = DEFAULT_ACCOUNT
    # How often these numbers were found busy (leased by another request) and put back.
    rechecks: int = 0
    _digests: bytes | None = field(default=None, repr=False)
    _entries: list[Entry] | None = field(default=None, repr=False)

    @classmethod
    def new(cls, consumer: str, account: str = DEFAULT_ACCOUNT) -> Batch:
        """An empty batch of ``account`` with a process-unique id."""
        return cls(_next_batch_id(consumer), account=account)

    @property
    def numbers(self) -> list[str]:
        """Unique numbers in arrival order."""
        return list(self.groups)

    @property
    def size(self) -> int:
        """Entries carried, duplicates included."""
        return sum(len(g) for g in self.groups.values())

    def add(self, entry: Entry) -> None:
        """Add an entry; a number already present rides along."""
        self._entries = None
        group = self.groups.get(entry.number)
        if group is None:
            self.groups[entry.number] = [entry]
        else:
            group.append(entry)

    def entries(self) -> list[Entry]:
        """Every entry carried (built once; the batch no longer changes once sent)."""
        if self._entries is None:
            self._entries = [e for g in self.groups.values() for e in g]
        return self._entries

    def subset(self, numbers: list[str]) -> Batch:
        """A batch of just ``numbers`` (for splits and resends); itself when that is all."""
        if len(numbers) == len(self.groups):
            return self
        return Batch(self.batch_id, {n: self.groups[n] for n in numbers}, self.account)

    def digests(self) -> bytes:
        """The dedupe digests of :attr:`numbers`, computed once per batch."""
        if self._digests is None:
            self._digests = digests(self.groups)
        return self._digests


class Holdings:
    """Every entry this process has read and not yet settled, by stream id.

    It is what shutdown hands back, and with a ``capacity`` it is the prefetch bound: the
    intake waits for room before reading more. Parked entries (a short batch's, waiting for
    its verification) are held but take no room, up to ``park_limit``: they must not stop
    the intake whose progress the verification waits for, but they stay bounded.
    """

    def __init__(self, capacity: int | None = None, park_limit: int | None = None) -> None:
        self._held: dict[bytes, Entry] = {}
        self._parked: set[bytes] = set()
        self._capacity = capacity
        self._park_limit = park_limit
        self._room: anyio.Event | None = None

    @property
    def full(self) -> bool:
        """True when holding ``capacity`` entries or more, parked ones not counted."""
        return self._capacity is not None and self._taking_room >= self._capacity

    @property
    def _taking_room(self) -> int:
        return len(self._held) - len(self._parked)

    @property
    def free(self) -> int:
        """How many more entries fit before ``capacity`` (a large number without one)."""
        if self._capacity is None:
            return 1 << 30
        return max(0, self._capacity - self._taking_room)

    def park(self, entries: list[Entry]) -> None:
        """Held entries that wait for their batch's verification: they take no room, up to
        ``park_limit`` of them; beyond it they do, so the intake slows down."""
        ids = [e.entry_id for e in entries if e.entry_id in self._held]
        ids = [i for i in ids if i not in self._parked]
        room = len(ids) if self._park_limit is None else self._park_limit - len(self._parked)
        self._parked.update(ids[: max(0, room)])
        self._wake()

    def is_parked(self, entry: Entry) -> bool:
        """True for an entry parked by :meth:`park` and not yet discarded."""
        return entry.entry_id in self._parked

    async def wait_for_room(self) -> None:
        """Return once fewer than ``capacity`` entries are held."""
        while self.full:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._held

    def held(self) -> list[Entry]:
        """Every entry held right now."""
        return list(self._held.values())

    def add(self, entries: list[Entry]) -> None:
        """Record entries just read or claimed."""
        held = self._held
        for e in entries:
            held[e.entry_id] = e

    def discard(self, entries: list[Entry]) -> None:
        """Forget settled or handed-back entries."""
        for e in entries:
            self._held.pop(e.entry_id, None)
            self._parked.discard(e.entry_id)
        self._wake()

    def _wake(self) -> None:
        if self._room is not None and not self.full:
            self._room.set()
            self._room = None

    def unsent(self) -> list[Entry]:
        """Entries no request has carried yet: safe to hand back to the group."""
        return [e for e in self._held.values() if not e.sent]
