"""Why a number was dead-lettered: the ``reason`` field of every ``<prefix>:dead`` entry.

Writers name their reason from :class:`DeadReason`, and ``ackworker dead --reason`` accepts
exactly :data:`REASONS`, so a reason the worker writes is always one an operator can filter
and replay by (``tests/test_reasons.py`` checks the writers that still spell it out).
"""

from __future__ import annotations

from enum import StrEnum


class DeadReason(StrEnum):
    """Every dead-letter reason; the value is what ``<prefix>:dead`` stores."""

    INVALID_ID = "invalid_id"
    """The entry had no valid ``id`` (source); nothing to send or replay."""
    UNKNOWN_ACCOUNT = "unknown_account"
    """The entry named an account that is not configured (source)."""
    REDELIVERED_TOO_OFTEN = "redelivered_too_often"
    """Delivered more than ``max_attempts`` times (source, at claim time)."""
    REJECTED = "rejected"
    """The API refused the number for good (processor)."""
    RETRIES_EXHAUSTED = "retries_exhausted"
    """The batch kept failing for ``max_attempts`` and ``retry_budget_s`` while the API
    answered others (processor); never because the endpoint was away."""
    UNCONFIRMED = "unconfirmed"
    """Still listed by ``PollTaskResult`` after every verified re-send (reconciler)."""


REASONS: tuple[str, ...] = tuple(reason.value for reason in DeadReason)
"""Every reason, in the order above."""
