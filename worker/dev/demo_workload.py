"""The demo's workload: which numbers go on the stream and in what order, how they get there
(``ackworker enqueue``, and malformed entries raw with XADD), and reading the streams back."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass

import redis

from worker.dev.demo_setup import TASKS, DemoError

# Entries without a valid id, as a careless or hostile producer might write them.
MALFORMED: tuple[dict[bytes, bytes], ...] = (
    {b"task_no": b"T-no-id"},
    {b"id": b""},
    {b"id": b"f" * 65},
    {b"id": b"\xff\xfe\x00\x01\x80binary"},
    {b"id": b";rm -rf /"},
    {b"id": b"1' OR '1'='1"},
    {b"id": b"../../etc/passwd"},
    {b"id": b"two words"},
    {b"id": "номер".encode()},
    {b"id": b"line\nbreak", b"domain": b"example.com"},
)


@dataclass(frozen=True, slots=True)
class Workload:
    """What goes on the stream: seeded numbers, then duplicates of some, then unknown ones."""

    seeded: list[str]
    duplicates: list[str]
    unknown: list[str]

    @classmethod
    def plan(cls, seeded: list[str], duplicates: int, unknown: int) -> Workload:
        """Pick duplicates among ``seeded`` and make up valid numbers it does not hold."""
        rng = random.Random(7)
        known = set(seeded)
        strangers: list[str] = []
        while len(strangers) < unknown:
            number = f"{rng.getrandbits(128):032x}"
            if number not in known:
                strangers.append(number)
        return cls(seeded, rng.sample(seeded, min(duplicates, len(seeded))), strangers)

    def stream_order(self) -> list[str]:
        """Duplicates follow every original, so most are settled from the dedupe memory.

        Unknown numbers come last, together: their shortfall lands in one reconcile record,
        and the duplicates read with them are settled from the dedupe memory rather than sent.
        A seeded number sent in a short batch is not remembered as confirmed (a short
        ``Result`` says how many were not confirmed, not which), so its duplicate would be
        sent again and show up as a second shortfall.
        """
        return [*self.seeded, *self.duplicates, *self.unknown]


def enqueue(env: dict[str, str], numbers: list[str]) -> None:
    """Put valid numbers on the stream the way upstream pollers do: ``ackworker enqueue``."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "enqueue"],
        input="\n".join(numbers).encode(),
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise DemoError(f"ackworker enqueue exited with code {done.returncode}: {tail}")


def write_malformed(client: redis.Redis) -> None:
    """XADD the malformed entries raw, bypassing the producer's validation."""
    with client.pipeline(transaction=False) as pipe:
        for fields in MALFORMED:
            pipe.xadd(TASKS, fields)  # type: ignore[arg-type]
        pipe.execute()


def stream(client: redis.Redis, key: str) -> list[dict[bytes, bytes]]:
    """Every entry's fields of stream ``key``, oldest first."""
    rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key)  # type: ignore[assignment]
    return [fields for _, fields in rows]


def backlog(client: redis.Redis) -> int:
    """``XLEN`` of the task stream: entries not yet settled."""
    return int(client.xlen(TASKS))  # type: ignore[arg-type]
