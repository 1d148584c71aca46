"""Structured logging: the one place ``structlog.configure`` is called.

Events have stable dotted names (``batch.settled``, ``api.retry_scheduled``); JSON lines go to
stdout by default, a coloured console format is there for people. A scrubbing processor is
the second line of defence for secrets: whatever a caller binds, values under sensitive keys,
registered secret strings, ``Signature=`` parameters, ``Authorization`` values and passwords
in URLs are masked before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog

from worker.errors import clip

MASK = "***"
_SENSITIVE_KEYS = frozenset(
    {
        "access_key_secret",
        "secret",
        "security_token",
        "token",
        "signature",
        "authorization",
        "password",
        "x-acs-security-token",
        "securitytoken",
    }
)
_PATTERNS = (
    # V1 signature as a query or form parameter.
    (re.compile(r"(Signature=)[^&\s\"']+"), r"\1" + MASK),
    # V3 Authorization header value and anything after "Signature=" in it.
    (re.compile(r"(ACS3-HMAC-SHA256 Credential=[^,\s]*,SignedHeaders=[^,\s]*,)\S+"), r"\1" + MASK),
    # An STS token echoed in a string to sign, raw or percent-encoded once or twice.
    (re.compile(r"(SecurityToken(?:=|%3D|%253D))(?:(?!%26|%2526|&)[^\s\"'])+"), r"\1" + MASK),
    # user:password@ in redis://, rediss:// and http(s) URLs.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1" + MASK + "@"),
)


class SecretScrubber:
    """A structlog processor that masks secrets anywhere in an event dict.

    ``add_secret`` registers literal values (the access key secret, the STS token, the Redis
    password) that are masked wherever they appear, even inside an exception message.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add_secret(self, value: str | None) -> None:
        """Mask ``value`` from now on; short values are ignored to avoid masking noise."""
        if value and len(value) >= 4:
            self._secrets.add(value)

    def scrub_text(self, text: str) -> str:
        """Return ``text`` with registered secrets and secret-shaped fragments masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def _scrub(self, key: str, value: Any) -> Any:
        if key.lower() in _SENSITIVE_KEYS and value is not None:
            return MASK
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {k: self._scrub(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(key, v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub_text(f"{type(value).__name__}: {value}")
        return value

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self._scrub(key, value)
        return event_dict


scrubber = SecretScrubber()


def _orjson_dumps(obj: Any, default: Any = None) -> bytes:
    return orjson.dumps(obj, default=default or str)


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "json",
    secrets: Iterable[str | None] = (),
    cache: bool = True,
) -> None:
    """Configure structlog for the process. ``fmt`` is ``json`` or ``console``.

    ``cache=False`` keeps loggers re-configurable, for tests that capture events.
    """
    for secret in secrets:
        scrubber.add_secret(secret)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrubber,
    ]
    level_no = logging.getLevelNamesMapping()[level.upper()]
    if fmt == "console":
        renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer(colors=False)
        factory: Any = structlog.PrintLoggerFactory(sys.stdout)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )


def describe_error(exc: BaseException) -> str:
    """``Type: message``, clipped and scrubbed: it may reach a log line or an HTTP answer."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: no answer in time"
    return clip(scrubber.scrub_text(f"{type(exc).__name__}: {exc}"))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose events carry ``component=name`` (``source``, ``client``...)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
