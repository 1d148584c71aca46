"""The README cannot rot silently: every setting, credential variable and log event is in it."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO
from worker.config import credentials
from worker.config.settings import SETTINGS_DOC

README = (REPO / "README.md").read_text(encoding="utf-8")
# Event names logged with a literal first argument, e.g. log.info("batch.settled", ...).
_LOG_CALL = re.compile(
    r"\blog\.(?:debug|info|warning|error|critical|exception)\(\s*\"([a-z_.]+)\""
    # ...or handed to a helper that logs it (ApiRetry, serve_until_signalled).
    r"|\bevent=\"([a-z_.]+)\""
)
# Logged through a variable in worker/pipeline/sendgate.py.
_INDIRECT_EVENTS = ("api.auth_failed", "api.clock_skew")


def logged_events() -> set[str]:
    """Every event name the worker logs (the stand-in's own logs are not the worker's)."""
    package = REPO / "worker"
    sources = [p for p in package.rglob("*.py") if not p.is_relative_to(package / "dev")]
    found = (m for path in sources for m in _LOG_CALL.findall(path.read_text()))
    return {direct or passed for direct, passed in found}


@pytest.mark.parametrize(("name", "env", "default", "doc"), SETTINGS_DOC)
def test_every_setting_is_documented(name: str, env: str, default: str, doc: str) -> None:
    row = re.search(rf"^\| `{re.escape(env)}` \|.*$", README, re.MULTILINE)
    assert row is not None, f"README's settings table has no row for {env}"
    assert f"`{name}`" in row.group(0), f"the row of {env} does not name the TOML key {name}"


@pytest.mark.parametrize(
    "variable",
    [
        credentials.ENV_ACCESS_KEY_ID,
        credentials.ENV_ACCESS_KEY_SECRET,
        credentials.ENV_SECURITY_TOKEN,
        credentials.ENV_CREDENTIALS_FILE,
        credentials.ENV_PROFILE,
    ],
)
def test_every_credential_variable_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README


def test_every_log_event_is_documented() -> None:
    events = logged_events() | set(_INDIRECT_EVENTS)
    assert "batch.settled" in events  # the scan itself works
    missing = sorted(e for e in events if f"`{e}`" not in README)
    assert missing == [], f"log events missing from README.md: {missing}"


def test_the_fresh_machine_commands_come_first() -> None:
    top = README[: README.index("\n## ", README.index("\n## ") + 1)]
    assert "make demo" in top
    assert "make test" in top
