"""Pieces several scenarios share: a stage with Redis, the stand-in and seeded numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from chaos.invariant import Ledger, check_invariant
from chaos.procs import MockApiProc, Stage, WorkerProc, enqueue, wait_until, worker_env
from chaos.report import Outcome
from worker.dev.sandbox import RedisServer
from worker.store.keys import Keys


@dataclass(slots=True)
class Rig:
    """One scenario's Redis, stand-in and key prefix."""

    stage: Stage
    redis: RedisServer
    api: MockApiProc
    prefix: str = "chaos"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    def client(self) -> Redis:
        return self.redis.client()

    def env(self, consumer: str, **extra: str) -> dict[str, str]:
        return worker_env(self.redis.url, self.prefix, self.api.url, consumer, **extra)

    def worker(self, consumer: str, **extra: str) -> WorkerProc:
        """Start a worker (waits for ``worker.started``); ``extra`` are environment settings."""
        return self.stage.worker(consumer, self.env(consumer, **extra))

    def push(self, ids: list[str], *, seed: bool = True) -> None:
        """Seed ``ids`` at the stand-in (unless told not to) and enqueue them."""
        if seed:
            self.api.seed(ids)
        with self.client() as client:
            enqueue(client, self.keys, [{"id": n} for n in ids])

    def backlog(self) -> int:
        """The input stream's entries and, with several accounts, their streams'."""
        with self.client() as client:
            streams = [self.keys.tasks, *client.scan_iter(f"{self.prefix}:tasks:*", _type="stream")]
            return sum(int(client.xlen(s)) for s in streams)

    def drained(self) -> bool:
        return self.backlog() == 0

    def wait_drained(self, timeout_s: float, what: str = "backlog settled") -> float:
        return wait_until(self.drained, timeout_s=timeout_s, what=what)

    def ledger(self, enqueued: list[str], *, stream_allowed: bool = False) -> Ledger:
        with self.client() as client:
            return check_invariant(
                client, self.keys, self.api, enqueued, stream_allowed=stream_allowed
            )

    def pending_of(self, consumer: str) -> list[bytes]:
        """Entry ids the consumer holds (read, not settled)."""
        with self.client() as client:
            rows: Any = client.xpending_range(
                self.keys.tasks, self.keys.group, "-", "+", 100_000, consumername=consumer
            )
        return [row["message_id"] for row in rows]

    def entries_left(self, entry_ids: list[bytes]) -> int:
        """How many of ``entry_ids`` are still in the task stream."""
        with self.client() as client, client.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(self.keys.tasks, min=entry_id, max=entry_id)
            return sum(1 for rows in pipe.execute() if rows)


def start_rig(stage: Stage, *mock_flags: str, redis_args: tuple[str, ...] = ()) -> Rig:
    """Redis and the stand-in (``mock_flags``) on fresh loopback ports."""
    server = stage.redis(*redis_args)
    api = stage.mock_api("--fault-seed", "6", *mock_flags)
    return Rig(stage, server, api)


def expect_invariant(outcome: Outcome, ledger: Ledger, *, resubmit_allowance: int = 0) -> None:
    """The invariant's checks, recorded in ``outcome``."""
    outcome.expect(
        not ledger.lost, f"{len(ledger.lost)} numbers silently gone, e.g. {ledger.lost[:3]}"
    )
    outcome.expect(
        ledger.resubmitted <= resubmit_allowance,
        f"stand-in saw {ledger.resubmitted} numbers submitted again after confirmation,"
        f" {resubmit_allowance} explained",
    )


def stop_cleanly(outcome: Outcome, *workers: WorkerProc, timeout_s: float = 30.0) -> None:
    """SIGTERM every worker; each must exit 0 and log ``worker.stopped``."""
    for worker in workers:
        worker.proc.terminate()
    for worker in workers:
        code = worker.wait_exit(timeout_s)
        outcome.expect(code == 0, f"{worker.name} exited {code} after SIGTERM: {worker.tail()}")
        outcome.expect(worker.has("worker.stopped"), f"{worker.name} logged no worker.stopped")


def no_tracebacks(outcome: Outcome, *workers: WorkerProc) -> None:
    for worker in workers:
        text = worker.output()
        outcome.expect("Traceback" not in text, f"{worker.name} printed a traceback")


class Timer:
    """Seconds since it was made."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self._start
