"""Log scrubbing, the second line of defence: secrets never reach a rendered line."""

from __future__ import annotations

import json

import pytest
import structlog

from worker.errors import AuthError
from worker.logs import SecretScrubber, configure_logging, get_logger

SECRET = "s3cr3t-VALUE-4242"
TOKEN = "sts-TOKEN-abcdef"


def _render(capsys: pytest.CaptureFixture[str], **event: object) -> str:
    configure_logging(level="debug", fmt="json", secrets=[SECRET, TOKEN], cache=False)
    get_logger("test").info("test.event", **event)
    out = capsys.readouterr().out
    structlog.reset_defaults()
    return out


@pytest.mark.parametrize(
    "event",
    [
        {"access_key_secret": SECRET},
        {"security_token": TOKEN},
        {
            "nested": {
                "Authorization": "ACS3-HMAC-SHA256 Credential=id,SignedHeaders=h,Signature=ab"
            }
        },
        {"url": f"https://domain.aliyuncs.com/?AccessKeyId=id&Signature=abc%2Fdef&x={SECRET}"},
        {"redis": "redis://user:hunter2pass@127.0.0.1:6379/0"},
        {"error": AuthError("SignatureDoesNotMatch", f"we computed with {SECRET}")},
        {"text": f"token {TOKEN} in prose"},
        {"items": [SECRET, {"signature": "x"}]},
    ],
)
def test_secrets_are_masked(capsys: pytest.CaptureFixture[str], event: dict[str, object]) -> None:
    out = _render(capsys, **event)
    for forbidden in (SECRET, TOKEN, "hunter2pass", "abc%2Fdef", "Signature=ab"):
        assert forbidden not in out
    line = json.loads(out)
    assert line["event"] == "test.event"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_console_format_also_scrubs(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="console", secrets=[SECRET], cache=False)
    get_logger("test").warning("test.console", detail=f"x{SECRET}x")
    out = capsys.readouterr().out
    structlog.reset_defaults()
    assert SECRET not in out
    assert "test.console" in out


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="warning", fmt="json", cache=False)
    log = get_logger("test")
    log.info("test.hidden")
    log.warning("test.shown")
    out = capsys.readouterr().out
    structlog.reset_defaults()
    assert "test.hidden" not in out
    assert "test.shown" in out


def test_short_values_are_not_registered() -> None:
    scrubber = SecretScrubber()
    scrubber.add_secret("ab")
    scrubber.add_secret(None)
    assert scrubber.scrub_text("abc") == "abc"
