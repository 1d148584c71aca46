"""Every Redis key ackworker uses, named in one place.

With ``cluster=True`` the prefix is wrapped in a ``{...}`` hash tag so that every key of a
prefix lands in one hash slot and Lua scripts may touch several of them. Redis hashes only the
text between a key's first ``{`` and the first ``}`` after it, when that text is not empty; so
a prefix may hold braces only as one non-empty ``{tag}`` (:func:`prefix_brace_problem`), or
its keys would land in different slots and every multi-key script fail with CROSSSLOT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from worker.entries import DEFAULT_ACCOUNT
from worker.errors import ConfigError


def prefix_brace_problem(prefix: str) -> str | None:
    """Why the braces of ``prefix`` would not give all its keys one hash tag; None when it
    has no braces or exactly one ``{tag}`` pair with a non-empty tag."""
    opens, closes = prefix.count("{"), prefix.count("}")
    if opens == closes == 0:
        return None
    if opens != 1 or closes != 1 or prefix.index("{") > prefix.index("}"):
        return "has braces that are not one {tag} pair (a hash tag must be a single {...})"
    if "{}" in prefix:
        return "has an empty hash tag {}, which Redis Cluster ignores"
    return None


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names derived from ``ACKWORKER_KEY_PREFIX``.

    ``stream`` names the stream this set of keys reads (:attr:`tasks`): the input stream, or
    with several accounts configured one account's stream (:meth:`for_account`). Every other
    key is the same whatever the stream.
    """

    prefix: str
    stream: str = "tasks"

    @classmethod
    def for_prefix(cls, prefix: str, *, cluster: bool = False) -> Keys:
        """Keys for ``prefix``; in cluster mode the prefix becomes a hash tag.

        Raises :class:`~worker.errors.ConfigError` when its braces would spread the keys over
        several cluster slots (see :func:`prefix_brace_problem`).
        """
        problem = prefix_brace_problem(prefix)
        if problem is not None:
            raise ConfigError(f"key prefix {prefix!r} {problem}")
        if cluster and not (prefix.startswith("{") and prefix.endswith("}")):
            prefix = "{" + prefix + "}"
        return cls(prefix)

    @property
    def group(self) -> str:
        """The consumer group every ``ackworker run`` joins."""
        return self.prefix

    @property
    def tasks(self) -> str:
        """The stream read: ``<prefix>:tasks`` (the input contract), or an account's stream."""
        return f"{self.prefix}:{self.stream}"

    @property
    def input(self) -> str:
        """The input stream producers write to, whatever :attr:`stream` is."""
        return f"{self.prefix}:tasks"

    def account_stream(self, account: str) -> str:
        """``<prefix>:tasks:<account>``: where, with several accounts configured, the input
        stream's entries of ``account`` are moved to be acknowledged."""
        return f"{self.prefix}:tasks:{account}"

    @property
    def accounts(self) -> str:
        """Set of every account whose stream (:meth:`account_stream`) a worker has used, so a
        worker can find the streams of accounts no longer configured and drain them."""
        return f"{self.prefix}:accounts"

    def for_account(self, account: str) -> Keys:
        """These keys reading :meth:`account_stream` of ``account``."""
        return replace(self, stream=f"tasks:{account}")

    @property
    def dead(self) -> str:
        """Stream of dead letters, one entry per number."""
        return f"{self.prefix}:dead"

    @property
    def reconcile(self) -> str:
        """Stream of batches whose ``Result`` did not match what was sent."""
        return f"{self.prefix}:reconcile"

    @property
    def limiter(self) -> str:
        """Hash holding the fleet's shared rate-limit state (GCRA and adaptive rate)."""
        return f"{self.prefix}:limiter"

    def limiter_for(self, account: str) -> str:
        """The limiter hash of ``account``: :attr:`limiter` for ``default``, else
        ``<prefix>:limiter:<account>``, so each account has its own rate and fleet pause."""
        return self.limiter if account == DEFAULT_ACCOUNT else f"{self.limiter}:{account}"

    def listing_for(self, account: str) -> str:
        """Where the fleet shares what verifications read of ``account``'s ``PollTaskResult``
        listing: keys ``<this>:<query>`` (:mod:`worker.store.listing`); ``<prefix>:listing``
        for ``default``, else ``<prefix>:listing:<account>``."""
        base = f"{self.prefix}:listing"
        return base if account == DEFAULT_ACCOUNT else f"{base}:{account}"

    @property
    def inflight(self) -> str:
        """Hash of numbers being sent right now: number -> ``consumer|lease deadline ms``."""
        return f"{self.prefix}:inflight"

    def settlement(self, token: str) -> str:
        """``<prefix>:settled:<token>``: the reply of the settle call of one settlement, kept
        two minutes, so a repeat of that call (its reply was lost) answers the same and
        writes nothing (see worker.store.settle)."""
        return f"{self.prefix}:settled:{token}"

    @property
    def seen_prefix(self) -> str:
        """Prefix of the dedupe memory buckets ``<prefix>:seen:<bucket>:<shard>``."""
        return f"{self.prefix}:seen:"

    def polled_prefix(self, account: str) -> str:
        """Prefix of ``ackworker poll``'s memory of what it enqueued, buckets
        ``<prefix>:polled:<bucket>:<shard>`` (``<prefix>:polled:<account>:...`` for a named
        account); each bucket expires, see worker.store.enqueue."""
        tail = "" if account == DEFAULT_ACCOUNT else f"{account}:"
        return f"{self.prefix}:polled:{tail}"

    @property
    def workers(self) -> str:
        """Sorted set of live workers: consumer -> heartbeat expiry (ms, Redis clock)."""
        return f"{self.prefix}:workers"

    def heartbeat(self, consumer: str) -> str:
        """Hash ``<prefix>:hb:<consumer>`` a running worker refreshes; it expires when it stops."""
        return f"{self.prefix}:hb:{consumer}"
