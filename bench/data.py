"""The numbers a scenario works on, and putting them where each contestant reads them.

Numbers are generated from a seed, so every contestant of a run (and every run) gets the
same data. Bulk loading uses one Lua call per chunk: enqueueing a million entries through
the producer's pipeline would take longer than most scenarios run.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis

from worker.store.keys import Keys

PREFIX = "bench"
KEYS = Keys.for_prefix(PREFIX)
PEER_LIST = f"{PREFIX}:list"
_CHUNK = 5000
# The same entry shape as `ackworker enqueue` writes: one field, `id`.
_XADD_ALL = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'id', ARGV[i]) end
return #ARGV
"""


def make_ids(count: int, seed: int = 5) -> list[str]:
    """``count`` distinct 32-hex task-detail numbers, the same for the same ``seed``."""
    rng = random.Random(seed)
    ids: dict[str, None] = {}  # a collision in 2^128 will not happen, but stay exact
    while len(ids) < count:
        ids[f"{rng.getrandbits(128):032x}"] = None
    return list(ids)


def write_seed_file(path: Path, ids: Sequence[str]) -> Path:
    """The stand-in's ``--seed-file``: one number a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{number}\n" for number in ids), encoding="ascii")
    return path


def ensure_group(client: redis.Redis, keys: Keys = KEYS) -> None:
    """Create the task stream and the worker's consumer group (from the start, id 0)."""
    try:
        client.xgroup_create(keys.tasks, keys.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def fill_stream(client: redis.Redis, ids: Sequence[str], keys: Keys = KEYS) -> int:
    """XADD ``{"id": number}`` for every number, in order; returns the stream length."""
    ensure_group(client, keys)
    script = client.register_script(_XADD_ALL)
    for start in range(0, len(ids), _CHUNK):
        script(keys=[keys.tasks], args=list(ids[start : start + _CHUNK]))
    return int(client.xlen(keys.tasks))  # type: ignore[arg-type]


def fill_list(client: redis.Redis, ids: Sequence[str], key: str = PEER_LIST) -> int:
    """RPUSH every number onto the list the SDK peers pop from; returns its length."""
    for start in range(0, len(ids), _CHUNK):
        client.rpush(key, *ids[start : start + _CHUNK])
    return int(client.llen(key))  # type: ignore[arg-type]


def fill_entries(
    client: redis.Redis, entries: Sequence[Mapping[str, str]], keys: Keys = KEYS
) -> int:
    """XADD every entry as its own field map (``id``, ``task_no``, ``domain``, as a poller
    writes them), in order, in pipelined chunks; returns how many were added.

    A pipeline, not the Lua loader: the scenarios that need fields enqueue tens of
    thousands of entries, not millions."""
    ensure_group(client, keys)
    for start in range(0, len(entries), _CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for fields in entries[start : start + _CHUNK]:
                pipe.xadd(keys.tasks, dict(fields))  # type: ignore[arg-type]
            pipe.execute()
    return len(entries)
