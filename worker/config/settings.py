"""Settings: one frozen, validated object built at the edge of the process.

Precedence is built-in defaults < TOML file < environment. The file (``--config``, else
``ACKWORKER_CONFIG``) uses the setting names at top level; each variable is the name upper-cased
with the ``ACKWORKER_`` prefix. This module and :mod:`worker.config.credentials` are the only
readers of the environment, and only through the mapping passed in; everything else receives a
:class:`Settings`.

Every setting is one row of ``SPECS`` (type, bounds or choices, one-line doc), so a new setting
is a field on :class:`Settings` plus one row. A bad value stops start-up with a one-line
:class:`~worker.errors.ConfigError` naming the variable, the value (URL passwords masked) and
what is allowed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from worker.config import values as k
from worker.config.accounts import Account, parse_accounts
from worker.config.credentials import CredentialSource, credential_source_from_env
from worker.entries import DEFAULT_ACCOUNT
from worker.errors import ConfigError
from worker.retry import RetryPolicy

ENV_PREFIX = "ACKWORKER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
_SHOW_MAX = 80  # characters of a bad value's repr shown in an error


def _default_consumer() -> str:
    """``<hostname>-<pid>``, made valid: whitespace replaced, clipped to 128 characters."""
    pid = str(os.getpid())
    host = "".join(c if c.isprintable() and not c.isspace() else "_" for c in socket.gethostname())
    return f"{host[: 127 - len(pid)]}-{pid}"


def _no_sources() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Every tunable of the worker. Build it with :func:`load_settings`, which validates.

    Units are in the names (``_ms``, ``_s``); ``rate_limit`` is requests per second.
    ``sources`` maps each setting to ``default``, ``file:<path>`` or ``env:<VARIABLE>``.
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "ackworker"
    consumer: str = field(default_factory=_default_consumer)
    endpoint: str = "https://domain.aliyuncs.com"
    signature: Literal["v3", "v1"] = "v3"
    lang: Literal["en", "zh"] = "en"
    user_client_ip: str | None = None
    batch_size: int = 100
    linger_ms: int = 200
    concurrency: int = 4
    rate_limit: float = 10.0  # requests per second, shared by all in-flight requests
    max_attempts: int = 6
    retry_budget_s: float = 300.0
    outage_after_s: float = 10.0
    claim_idle_ms: int = 60000
    dedupe_ttl_s: int = 86400
    shutdown_grace_s: float = 25.0
    http_timeout_s: float = 15.0
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    redis_ca_file: str | None = None
    redis_sentinels: str | None = None
    redis_sentinel_master: str = "mymaster"
    redis_cluster: bool = False
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    stats_interval_s: float = 30.0
    poll_interval_s: float = 30.0
    poll_page_size: int = 1000
    poll_max_pages: int = 100
    poll_task_result_status: int | None = None
    poll_task_no: str | None = None
    poll_domain_name: str | None = None
    verify_shortfall: bool = True
    verify_max_pages: int = 20
    verify_linger_ms: int = 500
    verify_max_wait_ms: int = 10_000
    verify_max_numbers: int = 20_000
    credentials: CredentialSource
    # The [accounts.<name>] tables: accounts besides the default one (the top-level settings).
    named_accounts: Mapping[str, Account] = field(default_factory=dict, compare=False, hash=False)
    sources: Mapping[str, str] = field(
        default_factory=_no_sources, compare=False, hash=False, repr=False
    )

    @property
    def account_names(self) -> tuple[str, ...]:
        """``default`` first, then the named accounts."""
        return (DEFAULT_ACCOUNT, *self.named_accounts)

    @property
    def all_accounts(self) -> Mapping[str, Account]:
        """Every account by name, ``default`` (the top-level settings) first."""
        default = Account(
            DEFAULT_ACCOUNT, self.endpoint, self.rate_limit, self.signature, self.credentials
        )
        return MappingProxyType({DEFAULT_ACCOUNT: default, **self.named_accounts})

    def account(self, name: str = DEFAULT_ACCOUNT) -> Account | None:
        """The account called ``name``; ``None`` when no such account is configured."""
        return self.all_accounts.get(name)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The API retry policy these settings describe."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            budget_s=self.retry_budget_s,
            outage_after_s=self.outage_after_s,
        )

    @property
    def connect_timeout_s(self) -> float:
        """Seconds allowed to open a connection: ``min(5.0, http_timeout_s)``."""
        return min(5.0, self.http_timeout_s)

    def __repr__(self) -> str:
        # The generated repr would print a password embedded in a URL.
        parts = [
            f"{f.name}={masked_value(f.name, getattr(self, f.name))!r}"
            for f in fields(self)
            if f.repr
        ]
        return f"Settings({', '.join(parts)})"


# --- Specs: one row per setting ----------------------------------------------------------


_LEVELS = ("debug", "info", "warning", "error", "critical")
# One setting per row reads as the table it is, so the formatter leaves it alone.
# fmt: off
SPECS: tuple[k.Spec, ...] = (
    k.Spec("redis_url", str, "must be a redis://, rediss:// or unix:// URL",
          "Redis URL: redis://, rediss:// (TLS) or unix://; may hold a password.",
          k.check_redis_url, url=True),
    k.Spec("key_prefix", str,
          "must be 1 to 64 characters of A-Z a-z 0-9 _ . : - and at most one {tag}",
          "Prefix of every Redis key; {braces} keep all keys in one cluster slot.",
          k.check_key_prefix),
    k.Spec("consumer", str, "must be 1 to 128 printable characters, no whitespace or '|'",
          "Consumer name in the stream's group; unique and stable per worker.", k.check_consumer),
    k.Spec("endpoint", str, "must be an http(s):// URL with a host, no query, fragment or user",
          "Domain API endpoint; a trailing slash is removed.", k.check_endpoint, url=True),
    k.choice("signature", ("v3", "v1"), "Signing: v3 (ACS3-HMAC-SHA256) or v1 (HMAC-SHA1)."),
    k.choice("lang", ("en", "zh"), "Language of the API's error messages."),
    k.Spec("user_client_ip", str, "must be an IPv4 or IPv6 address",
          "UserClientIp sent with each request; unset sends none.", k.check_ip, optional=True),
    k.integer("batch_size", 1, 1000, "Most task-detail numbers acknowledged in one request."),
    k.integer("linger_ms", 0, 60000, "Milliseconds to wait for a batch to fill before sending it."),
    k.integer("concurrency", 1, 256, "Most API requests in flight at once."),
    k.number("rate_limit", 0, 100000, "API requests per second, at most.", lo_open=True),
    k.integer("max_attempts", 1, 100, "Attempts per batch (and deliveries per entry) at least."),
    k.number("retry_budget_s", 0, 86400,
           "Seconds a batch may keep failing while the API answers others, then dead."),
    k.number("outage_after_s", 0.1, 3600,
           "Seconds of failures with no answer before the fleet pauses the account."),
    k.integer("claim_idle_ms", 1000, 86400000, "Milliseconds idle before an entry is claimed."),
    k.integer("dedupe_ttl_s", 0, 2592000, "Seconds acknowledged ids are remembered; 0 disables."),
    k.number("shutdown_grace_s", 0, 3600, "Seconds to finish in-flight work on shutdown."),
    k.number("http_timeout_s", 0, 300, "Seconds per API request; connect: min(5, this).",
           lo_open=True),
    k.choice("log_format", ("json", "console"), "Log lines as JSON, or coloured for people."),
    k.choice("log_level", _LEVELS, "Lowest level logged (any case).", fold_case=True),
    k.Spec("redis_ca_file", str, "must be a path to a PEM file",
          "CA bundle that verifies a rediss:// server; unset uses the system CAs.",
          k.check_path, optional=True),
    k.Spec("redis_sentinels", str, "must be host:port pairs separated by commas",
          "Sentinel addresses (host:port,host:port); set to find Redis through Sentinel.",
          k.check_sentinels, optional=True),
    k.Spec("redis_sentinel_master", str, "must be 1 to 128 characters with no whitespace",
          "Name of the primary the Sentinels watch.", k.check_consumer),
    k.flag("redis_cluster", "Talk to a Redis Cluster; the key prefix becomes a {hash tag}."),
    k.Spec("http_host", str, "must be a host name or IP address without spaces",
          "Address the health and metrics endpoint binds to.", k.check_host),
    k.Spec("http_port", int, "must be an integer from 1 to 65535",
          "Port of /healthz, /readyz and /metrics; unset keeps the endpoint off.",
          k.check_port, optional=True),
    k.number("stats_interval_s", 1, 86400, "Seconds between worker.stats log events."),
    k.number("poll_interval_s", 0.1, 86400, "Seconds between cycles of ackworker poll."),
    k.integer("poll_page_size", 1, 1000, "PageSize of each PollTaskResult call."),
    k.integer("poll_max_pages", 1, 100000, "Most PollTaskResult pages one poll cycle reads."),
    k.Spec("poll_task_result_status", int, "must be 2 (succeeded) or 3 (failed)",
          "TaskResultStatus filter of ackworker poll; unset polls both.",
          k.check_task_result_status, optional=True),
    k.Spec("poll_task_no", str, "must be 1 to 64 characters of letters, digits, '-' and '_'",
          "TaskNo filter of ackworker poll; unset polls every task.", k.check_api_token,
          optional=True),
    k.Spec("poll_domain_name", str, "must be a domain name without spaces, at most 253 characters",
          "DomainName filter of ackworker poll; unset polls every domain.", k.check_domain_name,
          optional=True),
    k.flag("verify_shortfall", "Ask PollTaskResult which numbers a short batch left unconfirmed."),
    k.integer("verify_max_pages", 1, 1000, "Most PollTaskResult pages one verification reads."),
    k.integer("verify_linger_ms", 0, 60_000,
              "Least milliseconds a verification round gathers shortfalls before it asks."),
    k.integer("verify_max_wait_ms", 0, 600_000,
              "Most milliseconds a shortfall waits for a cheaper verification round."),
    k.integer("verify_max_numbers", 1, 1_000_000,
              "Most numbers gathered for one verification round (bounds parked entries)."),
)
# fmt: on
_SPEC_BY_NAME = {spec.name: spec for spec in SPECS}

ENV_NAMES: Mapping[str, str] = MappingProxyType(
    {spec.name: ENV_PREFIX + spec.name.upper() for spec in SPECS}
)
"""Setting name -> environment variable name."""


def _default_text(name: str) -> str:
    """The default as a TOML literal, or a description when it has none."""
    default = Settings.__dataclass_fields__[name].default
    if default is MISSING:
        return "<hostname>-<pid>"
    return "unset" if default is None else json.dumps(default)


SETTINGS_DOC: tuple[tuple[str, str, str, str], ...] = tuple(
    (spec.name, ENV_NAMES[spec.name], _default_text(spec.name), spec.doc) for spec in SPECS
)
"""(name, environment variable, default as TOML, one-line doc) per setting, for docs."""


# --- Loading -----------------------------------------------------------------------------


def load_settings(
    config_path: str | None, environ: Mapping[str, str], *, require_credentials: bool = True
) -> Settings:
    """Build :class:`Settings` from defaults, the TOML file and ``environ``, then load
    credentials once so that bad ones stop start-up. Raises ConfigError (one line).

    Commands that never call the API (``enqueue``) pass ``require_credentials=False``: then
    missing credentials are only an error if something later calls ``credentials.load()``.
    """
    path = config_path or environ.get(CONFIG_ENV) or None
    table = _read_file(path, from_env=not config_path) if path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        env_name = ENV_NAMES[spec.name]
        if env_name in environ:
            values[spec.name] = _parse(spec, environ[env_name], env_name, from_env=True)
            sources[spec.name] = f"env:{env_name}"
        elif spec.name in table:
            where = f"{path}: {spec.name}"
            values[spec.name] = _parse(spec, table[spec.name], where, from_env=False)
            sources[spec.name] = f"file:{path}"
        else:
            sources[spec.name] = "default"
    accounts: dict[str, Account] = {}
    if "accounts" in table:
        defaults = {name: values.get(name, _default(name)) for name in _ACCOUNT_DEFAULTS}
        accounts = parse_accounts(table["accounts"], str(path), environ, defaults)
    try:
        credentials = credential_source_from_env(environ)
        credentials.load()
    except ConfigError:
        if require_credentials:
            raise
        credentials = CredentialSource("environment")
    return Settings(
        **values,
        credentials=credentials,
        named_accounts=MappingProxyType(accounts),
        sources=MappingProxyType(sources),
    )


_ACCOUNT_DEFAULTS = ("endpoint", "rate_limit", "signature")


def _default(name: str) -> Any:
    return Settings.__dataclass_fields__[name].default


def _read_file(path: str, *, from_env: bool) -> dict[str, Any]:
    label = f"config file {path!r}" + (f" ({CONFIG_ENV})" if from_env else "")
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label} is not valid TOML: {exc}") from None
    for key in table:
        if key not in _SPEC_BY_NAME and key != "accounts":
            raise ConfigError(f"{path}: unknown setting {key!r}{_suggest(key)}")
    return table


def _suggest(key: str) -> str:
    guess = key.lower().removeprefix(ENV_PREFIX.lower())
    close = difflib.get_close_matches(guess, list(_SPEC_BY_NAME), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse(spec: k.Spec, raw: object, where: str, *, from_env: bool) -> Any:
    if spec.optional and raw == "":
        return None
    try:
        typed = k.from_text(spec.kind, raw) if from_env else k.from_toml(spec.kind, raw)
        return spec.check(typed)
    except k.Invalid as exc:
        shown = _show(masked_value(spec.name, raw))
        raise ConfigError(f"{where}={shown} {exc.args[0]}: {spec.allowed}") from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def masked_value(name: str, value: object) -> object:
    """``value`` of setting ``name`` as it may be shown: URL passwords masked."""
    spec = _SPEC_BY_NAME.get(name)
    if spec is not None and spec.url and isinstance(value, str):
        return mask_url_password(value)
    return value


def mask_url_password(url: str) -> str:
    """``url`` with any password replaced by ``***``: in ``user:password@`` (a lone
    ``user@`` is masked whole, since some clients read it as a password) and in a
    ``password=`` query parameter. Works on malformed URLs too."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if sep and at:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***" if colon else "***") + at + hostpart
    masked = scheme + sep + rest if sep else url
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", masked)
