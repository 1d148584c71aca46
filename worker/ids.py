"""Dedupe digests of task-detail numbers, and the compact argument forms Lua scripts take.

Lists travel to Redis as one argument each (numbers joined by newlines, digests back to
back): packing hundreds of separate arguments cost the client more CPU than everything else
on the settle path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

DIGEST_BYTES = 12


def digest(number: str) -> bytes:
    """12 bytes of BLAKE2b: the first two pick one of 4096 shards, the other ten are the
    field within the shard's hash (92 bits in all)."""
    return hashlib.blake2b(number.encode(), digest_size=DIGEST_BYTES).digest()


def digests(numbers: Iterable[str]) -> bytes:
    """The digests of ``numbers`` concatenated."""
    blake = hashlib.blake2b
    return b"".join([blake(n.encode(), digest_size=DIGEST_BYTES).digest() for n in numbers])


def join_numbers(numbers: Iterable[str]) -> str:
    """Numbers as one newline-separated argument (valid numbers never hold a newline)."""
    return "\n".join(numbers)
