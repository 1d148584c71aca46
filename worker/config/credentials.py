"""Alibaba Cloud credentials: where they come from, and reading them without leaking them.

The names follow the official credential chain (API doc section 7). The environment pair wins;
otherwise an INI file (``type = access_key`` or ``sts``) is read. A file source re-reads the
file on every :meth:`CredentialSource.load`, so an operator who fixes or rotates the file does
not have to restart the worker.

No message, ``repr`` or description built here ever contains a secret or a token: errors name
the variable, file, profile and key, never the value.
"""

from __future__ import annotations

import configparser
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from worker.errors import ConfigError

ENV_ACCESS_KEY_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_SECURITY_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"
ENV_CREDENTIALS_FILE = "ALIBABA_CLOUD_CREDENTIALS_FILE"
ENV_PROFILE = "ALIBABA_CLOUD_PROFILE"
DEFAULT_CREDENTIALS_FILE = "~/.alibabacloud/credentials.ini"
DEFAULT_PROFILE = "default"
FILE_TYPES = ("access_key", "sts")
NO_CREDENTIALS = (
    f"no Alibaba Cloud credentials: set {ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET},"
    f" or {ENV_CREDENTIALS_FILE}"
)
_MASK = "***"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An AccessKey pair, plus the token when it is a temporary (STS) one.

    ``repr`` shows only the first characters of the key id; never the secret or the token.
    """

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        token = _MASK if self.security_token is not None else None
        return (
            f"Credentials(access_key_id={self.masked_key_id()!r},"
            f" access_key_secret={_MASK!r}, security_token={token!r})"
        )

    def masked_key_id(self) -> str:
        """The first 4 characters of the key id and ``***``; all masked if it is short."""
        # A short id would be given away almost whole by its first 4 characters.
        if len(self.access_key_id) < 8:
            return _MASK
        return self.access_key_id[:4] + _MASK


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where credentials come from; :meth:`load` (re)reads them.

    ``environment`` sources hold the values captured when the process started (``captured``);
    ``file`` sources hold the INI ``path`` and ``profile`` and read the file on every call.
    """

    kind: Literal["environment", "file"]
    captured: Credentials | None = None
    path: str | None = None
    profile: str = DEFAULT_PROFILE
    # The variables an ``environment`` source was read from, when not the standard ones.
    variables: tuple[str, ...] = ()

    def load(self) -> Credentials:
        """Validate and return the credentials; raise ConfigError naming what is wrong."""
        if self.kind == "environment":
            if self.captured is None:
                raise ConfigError("environment credential source holds no credentials")
            return _checked_env(self.captured)
        if self.path is None:
            raise ConfigError("file credential source has no path")
        return _load_file(self.path, self.profile)

    def describe(self) -> str:
        """One line for operators, e.g. ``environment (ALIBABA_CLOUD_ACCESS_KEY_ID)``."""
        if self.kind == "file":
            return f"file:{self.path} [profile {self.profile}]"
        if self.variables:
            return f"environment ({', '.join(self.variables)})"
        names = [ENV_ACCESS_KEY_ID]
        if self.captured is not None and self.captured.security_token is not None:
            names.append(ENV_SECURITY_TOKEN)
        return f"environment ({', '.join(names)})"


def credential_source_from_env(environ: Mapping[str, str]) -> CredentialSource:
    """Choose the source from the environment: the key pair if set, else the INI file.

    Empty variables count as unset. Raises ConfigError when only half of the pair is set,
    when an explicitly named file does not exist, or when there is nothing at all.
    """
    key_id = environ.get(ENV_ACCESS_KEY_ID, "")
    secret = environ.get(ENV_ACCESS_KEY_SECRET, "")
    if key_id and secret:
        token = environ.get(ENV_SECURITY_TOKEN) or None
        return CredentialSource("environment", captured=Credentials(key_id, secret, token))
    if key_id or secret:
        have, missing = (
            (ENV_ACCESS_KEY_ID, ENV_ACCESS_KEY_SECRET)
            if key_id
            else (ENV_ACCESS_KEY_SECRET, ENV_ACCESS_KEY_ID)
        )
        raise ConfigError(f"{have} is set but {missing} is not: set both, or neither")
    return _file_source(environ)


def _file_source(environ: Mapping[str, str]) -> CredentialSource:
    explicit = environ.get(ENV_CREDENTIALS_FILE) or None
    path = _expand_home(explicit or DEFAULT_CREDENTIALS_FILE, environ)
    if not Path(path).exists():
        if explicit:
            raise ConfigError(f"{ENV_CREDENTIALS_FILE}={explicit!r}: file does not exist")
        raise ConfigError(NO_CREDENTIALS)
    profile = environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    return CredentialSource("file", path=path, profile=profile)


def _expand_home(path: str, environ: Mapping[str, str]) -> str:
    if path != "~" and not path.startswith("~/"):
        return path
    home = environ.get("HOME") or _home_from_passwd()
    return path if home is None else home + path[1:]


def _home_from_passwd() -> str | None:
    # Not os.path.expanduser: it would read os.environ behind the caller's mapping.
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


def _checked_env(creds: Credentials) -> Credentials:
    _check_token(creds.access_key_id, ENV_ACCESS_KEY_ID)
    _check_token(creds.access_key_secret, ENV_ACCESS_KEY_SECRET)
    if creds.security_token is not None:
        _check_token(creds.security_token, ENV_SECURITY_TOKEN)
    return creds


def _check_token(value: str, name: str) -> None:
    """Reject values that cannot sign: pasted whitespace, control or non-ASCII characters."""
    if not value:
        raise ConfigError(f"{name} is empty")
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        raise ConfigError(f"{name} is not valid: must be printable ASCII with no whitespace")


def _load_file(path: str, profile: str) -> Credentials:
    where = f"credentials file {path}"
    parser = _read_ini(path, where)
    if not parser.has_section(profile):
        known = ", ".join(parser.sections()) or "none"
        raise ConfigError(f"{where} has no profile {profile!r} ({ENV_PROFILE}); profiles: {known}")
    section = parser[profile]
    label = f"{where} [profile {profile}]"
    kind = section.get("type", "").strip()
    if kind not in FILE_TYPES:
        problem = "type is missing" if not kind else f"type={kind!r} is not supported"
        raise ConfigError(f"{label}: {problem}: must be one of {', '.join(FILE_TYPES)}")
    key_id = _required(section, "access_key_id", label)
    secret = _required(section, "access_key_secret", label)
    token = _required(section, "security_token", label) if kind == "sts" else None
    return Credentials(key_id, secret, token)


def _read_ini(path: str, where: str) -> configparser.ConfigParser:
    # No interpolation: a '%' in a secret is a character, not a reference.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    except configparser.Error as exc:
        # configparser quotes the offending line, which may hold a secret: give its number only.
        raise ConfigError(f"{where} is not a valid INI file{_line_of(exc)}") from None
    return parser


def _line_of(exc: configparser.Error) -> str:
    # MissingSectionHeaderError is a ParsingError without `errors`, hence getattr throughout.
    errors = getattr(exc, "errors", None)
    lineno = errors[0][0] if errors else getattr(exc, "lineno", None)
    return f" (line {lineno})" if isinstance(lineno, int) else ""


def _required(section: configparser.SectionProxy, key: str, label: str) -> str:
    value = section.get(key)
    if value is None:
        raise ConfigError(f"{label}: {key} is missing")
    _check_token(value, f"{label}: {key}")
    return value
