"""Lanes: one per account, each with its own send gate, limiter, API client and senders.

Batches never mix accounts (:mod:`worker.batcher`), and each account's batches travel their
own lane: a lane's senders wait only on that account's limiter, fleet pause and gate, so one
account that is throttled, paused or refused does not slow the others. Every log line a
lane's senders write carries ``account`` (bound with structlog's contextvars).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.gate import SendGate
from worker.processor import Acknowledger, Processor


@dataclass(slots=True)
class AccountParts:
    """The API client of one named account (the default account's is ``WorkerParts.client``)
    and how to re-read its credentials after a refusal."""

    client: Acknowledger
    reload_credentials: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Lane:
    """One account's path to the API: its gate and the processor that owns its limiter and
    client. The runner gives each lane its own batch stream and senders."""

    account: str
    gate: SendGate
    processor: Processor
