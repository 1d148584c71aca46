"""Setting kinds and value checks: how a setting's text or TOML value becomes a typed, valid
value, or an :class:`Invalid` that completes the one-line error ``<where>=<value> ...``."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from worker.store.keys import prefix_brace_problem


class Invalid(Exception):
    """A value failed a check; ``args[0]`` completes ``<where>=<value> ...``."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting: its type, what is allowed, its one-line doc and its check."""

    name: str
    kind: type[Any]  # str, int, float or bool: the TOML type required and how env text parses
    allowed: str  # completes "...: " in error messages
    doc: str
    check: Callable[[Any], Any]  # validates a typed value and returns it normalized
    optional: bool = False  # an empty value means unset (None)
    url: bool = False  # mask a password before showing the value


def integer(name: str, lo: int, hi: int, doc: str) -> Spec:
    """An integer setting from ``lo`` to ``hi`` inclusive."""

    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise Invalid("is out of range")
        return value

    return Spec(name, int, f"must be an integer from {lo} to {hi}", doc, check)


def number(name: str, lo: float, hi: float, doc: str, *, lo_open: bool = False) -> Spec:
    """A finite number from ``lo`` (excluded with ``lo_open``) to ``hi``."""

    def check(value: float) -> float:
        if not math.isfinite(value):
            raise Invalid("is not a finite number")
        if value < lo or value > hi or (lo_open and value == lo):
            raise Invalid("is out of range")
        return float(value)

    span = f"greater than {lo:g} and at most {hi:g}" if lo_open else f"from {lo:g} to {hi:g}"
    return Spec(name, float, f"must be a number {span}", doc, check)


def choice(name: str, options: tuple[str, ...], doc: str, *, fold_case: bool = False) -> Spec:
    """One of ``options``; ``fold_case`` accepts any case and stores lower case."""

    def check(value: str) -> str:
        key = value.lower() if fold_case else value
        if key not in options:
            raise Invalid("is not allowed")
        return key

    return Spec(name, str, f"must be one of {', '.join(options)}", doc, check)


def check_redis_url(url: str) -> str:
    """A redis://, rediss:// or unix:// URL with a numeric database, if any."""
    parts = _split_url(url, ("redis", "rediss", "unix"))
    if parts.scheme == "unix" and not parts.path:
        raise Invalid("has no socket path")
    if parts.scheme != "unix" and not re.fullmatch(r"/?[0-9]*", parts.path):
        raise Invalid("has a database number that is not an integer")
    return url


def check_endpoint(url: str) -> str:
    """An http(s) URL with a host and nothing after the path; trailing slash removed."""
    parts = _split_url(url, ("http", "https"))
    if "?" in url or "#" in url or "@" in parts.netloc:
        raise Invalid("has a query, fragment, user or password")
    return url.rstrip("/")


def _split_url(url: str, schemes: tuple[str, ...]) -> SplitResult:
    # urlsplit silently drops tabs and newlines, so refuse them before it can.
    if not url.isprintable() or any(c.isspace() for c in url):
        raise Invalid("contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError unless a number from 0 to 65535
    except ValueError:
        raise Invalid("is not a valid URL") from None
    if parts.scheme not in schemes:
        raise Invalid("has an unsupported scheme")
    if parts.scheme != "unix" and not parts.hostname:
        raise Invalid("has no host")
    if port == 0:
        raise Invalid("has port 0")
    return parts


def check_key_prefix(value: str) -> str:
    """1 to 64 characters usable in a Redis key, with braces only as one non-empty hash tag
    (``{ack}``, ``{ack}:v2``): any other braces would put its keys in different cluster slots."""
    if not re.fullmatch(r"[A-Za-z0-9_.:{}-]{1,64}", value):
        raise Invalid("is not valid")
    problem = prefix_brace_problem(value)
    if problem is not None:
        raise Invalid(problem)
    return value


def check_consumer(value: str) -> str:
    """A consumer name: printable, no whitespace, no '|'."""
    if not 1 <= len(value) <= 128 or not value.isprintable() or any(c.isspace() for c in value):
        raise Invalid("is not valid")
    if "|" in value:
        # In-flight leases read "<consumer>|<batch>|<deadline>"; a '|' would blur the owner.
        raise Invalid("contains '|'")
    return value


def check_path(value: str) -> str:
    """A non-empty file path."""
    if not value or "\x00" in value:
        raise Invalid("is not a path")
    return value


def check_sentinels(value: str) -> str:
    """Comma-separated host:port pairs."""
    for pair in value.split(","):
        host, _, port = pair.strip().rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise Invalid("is not a list of host:port")
    return value


def check_host(value: str) -> str:
    """A host name or address without whitespace."""
    if not value or not value.isprintable() or any(c.isspace() for c in value):
        raise Invalid("is not a host")
    return value


def check_port(value: int) -> int:
    """A TCP port from 1 to 65535."""
    if not 1 <= value <= 65535:
        raise Invalid("is out of range")
    return value


def flag(name: str, doc: str) -> Spec:
    """A boolean: TOML true/false; in the environment true/false, yes/no or 1/0."""
    return Spec(name, bool, "must be true or false", doc, lambda value: value)


def check_task_result_status(value: int) -> int:
    """``TaskResultStatus``: 2 (succeeded) or 3 (failed)."""
    if value not in (2, 3):
        raise Invalid("is not allowed")
    return value


def check_api_token(value: str) -> str:
    """An API identifier such as a ``TaskNo``: 1 to 64 letters, digits, ``-`` and ``_``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise Invalid("is not allowed")
    return value


def check_domain_name(value: str) -> str:
    """A domain name as the API takes it: printable, no whitespace, at most 253 characters."""
    if not 0 < len(value) <= 253 or not value.isprintable() or any(c.isspace() for c in value):
        raise Invalid("is not allowed")
    return value


def check_ip(value: str) -> str:
    """An IPv4 or IPv6 address, normalized."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid("is not an IP address") from None


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TYPE_PROBLEM = {
    int: "is not an integer",
    float: "is not a number",
    str: "is not a string",
    bool: "is not true or false",
}
_BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def from_text(kind: type[Any], text: Any) -> Any:
    """Environment text to the setting's type; stricter than int()/float() (no "1e3" ints,
    no "nan", no "1_000", no surrounding spaces)."""
    if kind is int and _INT_TEXT.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than Python converts
            raise Invalid("is out of range") from None
    if kind is float and _FLOAT_TEXT.fullmatch(text):
        return float(text)
    if kind is bool and text.lower() in _BOOL_TEXT:
        return _BOOL_TEXT[text.lower()]
    if kind is str:
        return text
    raise Invalid(_TYPE_PROBLEM[kind])


def from_toml(kind: type[Any], value: object) -> Any:
    """A TOML value of the setting's type (booleans are not numbers)."""
    if kind is bool:
        if not isinstance(value, bool):
            raise Invalid(_TYPE_PROBLEM[bool])
        return value
    accepted = (int, float) if kind is float else kind
    # bool is a subclass of int, but `true` is not a count.
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise Invalid(_TYPE_PROBLEM[kind])
    return value
