"""Lanes: one per account, each a whole pipeline of its own.

A lane reads its own stream (the input stream itself with one account; the account's stream,
fed by :mod:`worker.router`, with several), holds at most its own prefetch bound, and sends
through its own send gate, limiter (``<prefix>:limiter[:<account>]``, with its own fleet pause),
HTTP client and ``concurrency`` senders. So an account that is throttled, paused or refused
holds up nothing but itself. Every log line a lane's tasks write carries ``account`` (bound
with structlog's contextvars).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.entries import Holdings
from worker.gate import SendGate
from worker.keys import Keys
from worker.processor import Acknowledger, Processor
from worker.settle import Settler
from worker.source import StreamSource


@dataclass(slots=True)
class AccountParts:
    """The API client of one named account (the default account's is ``WorkerParts.client``)
    and how to re-read its credentials after a refusal."""

    client: Acknowledger
    reload_credentials: Callable[[], None] | None = None


@dataclass(slots=True)
class Lane:
    """One account's pipeline: ``keys.tasks`` is the stream it reads, ``holdings`` what it has
    read and not settled (bounded), ``processor`` takes its batches to their outcome."""

    account: str
    keys: Keys
    gate: SendGate
    settler: Settler
    source: StreamSource
    holdings: Holdings
    processor: Processor | None = field(default=None, repr=False)

    @property
    def processes(self) -> Processor:
        """The lane's processor (set once the lane is wired)."""
        assert self.processor is not None
        return self.processor
