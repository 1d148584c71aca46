"""Accounts: whose credentials, endpoint and rate limit a request uses.

The top-level settings describe the account named ``default``. A config file may name more::

    [accounts.eu]
    endpoint = "https://domain-intl.aliyuncs.com"   # default: the top-level endpoint
    rate_limit = 5.0                                 # default: the top-level rate_limit
    signature = "v3"                                 # default: the top-level signature
    credentials_file = "/etc/ackworker/eu.ini"       # an INI file, re-read on every probe,
    credentials_profile = "default"                  #   and its profile; or the names of two
    # access_key_id_env = "EU_ACCESS_KEY_ID"         #   environment variables (and optionally
    # access_key_secret_env = "EU_ACCESS_KEY_SECRET" #   security_token_env) to read at start-up

Each account has its own limiter (``Keys.limiter_for``), fleet pause, send gate and HTTP client;
a stream entry picks one with its ``account`` field. Only the environment mapping passed in is
read, never ``os.environ``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from worker.config import values as k
from worker.config.credentials import DEFAULT_PROFILE, Credentials, CredentialSource
from worker.entries import DEFAULT_ACCOUNT
from worker.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEYS = frozenset(
    {
        "endpoint",
        "rate_limit",
        "signature",
        "credentials_file",
        "credentials_profile",
        "access_key_id_env",
        "access_key_secret_env",
        "security_token_env",
    }
)
_RATE = k.number("rate_limit", 0, 100000, "", lo_open=True)


def is_account_name(value: str) -> bool:
    """1 to 32 letters, digits, ``-`` and ``_``."""
    return _NAME.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Account:
    """One Alibaba Cloud account: ``rate_limit`` in requests per second, shared by every
    worker and poller of the fleet that uses this account."""

    name: str
    endpoint: str
    rate_limit: float
    signature: Literal["v3", "v1"]
    credentials: CredentialSource


def parse_accounts(
    table: object,
    where: str,
    environ: Mapping[str, str],
    defaults: Mapping[str, Any],
) -> dict[str, Account]:
    """The ``[accounts.*]`` tables of the config file at ``where``, validated.

    ``defaults`` holds the top-level ``endpoint``, ``rate_limit`` and ``signature``.
    Raises ConfigError naming the table and key.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: accounts must be a table of [accounts.<name>] tables")
    accounts: dict[str, Account] = {}
    for name, body in table.items():
        label = f"{where}: accounts.{name}"
        if name == DEFAULT_ACCOUNT:
            raise ConfigError(f"{label}: the default account is the top-level settings")
        if not is_account_name(name):
            raise ConfigError(f"{label}: an account name must be 1 to 32 of A-Z a-z 0-9 _ -")
        if not isinstance(body, dict):
            raise ConfigError(f"{label} must be a table")
        accounts[name] = _account(name, body, label, environ, defaults)
    return accounts


def _account(
    name: str,
    body: dict[str, Any],
    label: str,
    environ: Mapping[str, str],
    defaults: Mapping[str, Any],
) -> Account:
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{label}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}"
        )
    return Account(
        name=name,
        endpoint=_checked(label, "endpoint", body, defaults, k.check_endpoint, str),
        rate_limit=_checked(label, "rate_limit", body, defaults, _RATE.check, float),
        signature=cast(
            Literal["v3", "v1"],
            _checked(label, "signature", body, defaults, _signature, str),
        ),
        credentials=_credentials(body, label, environ),
    )


def _signature(value: str) -> str:
    if value not in ("v3", "v1"):
        raise k.Invalid("is not allowed: must be v3 or v1")
    return value


def _checked(
    label: str,
    key: str,
    body: Mapping[str, Any],
    defaults: Mapping[str, Any],
    check: Any,
    kind: type[Any],
) -> Any:
    if key not in body:
        return defaults[key]
    raw = body[key]
    try:
        return check(k.from_toml(kind, raw))
    except k.Invalid as exc:
        raise ConfigError(f"{label}: {key}={raw!r} {exc.args[0]}") from None


def _credentials(
    body: Mapping[str, Any], label: str, environ: Mapping[str, str]
) -> CredentialSource:
    path = body.get("credentials_file")
    id_env = body.get("access_key_id_env")
    secret_env = body.get("access_key_secret_env")
    if (path is None) == (id_env is None and secret_env is None):
        raise ConfigError(
            f"{label}: set credentials_file, or access_key_id_env and access_key_secret_env"
        )
    if path is not None:
        if "security_token_env" in body:
            raise ConfigError(f"{label}: security_token_env goes with the *_env keys only")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{label}: credentials_file must be a path")
        profile = body.get("credentials_profile", DEFAULT_PROFILE)
        if not isinstance(profile, str) or not profile:
            raise ConfigError(f"{label}: credentials_profile must be a profile name")
        return CredentialSource("file", path=path, profile=profile)
    if "credentials_profile" in body:
        raise ConfigError(f"{label}: credentials_profile goes with credentials_file only")
    names = {"access_key_id_env": id_env, "access_key_secret_env": secret_env}
    if "security_token_env" in body:
        names["security_token_env"] = body["security_token_env"]
    values: dict[str, str] = {}
    for key, variable in names.items():
        if not isinstance(variable, str) or not variable:
            raise ConfigError(f"{label}: {key} must name an environment variable")
        if not environ.get(variable):
            raise ConfigError(f"{label}: {key}: environment variable {variable} is not set")
        values[key] = environ[variable]
    token = values.get("security_token_env")
    creds = Credentials(values["access_key_id_env"], values["access_key_secret_env"], token)
    used = tuple(str(names[key]) for key in values)
    return CredentialSource("environment", captured=creds, variables=used)
