"""Credentials come from the environment pair or an INI profile, and never leak into text."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from worker.api.client import CredentialsLike, DomainClient
from worker.config.accounts import Account
from worker.config.credentials import (
    NO_CREDENTIALS,
    Credentials,
    CredentialSource,
    credential_source_from_env,
)
from worker.errors import ConfigError
from worker.logs import scrubber
from worker.pipeline.clients import credential_reloader

KEY_ID = "LTAI5tKEYIDforTESTS"
SECRET = "Zq9-UNMISTAKABLE-SECRET-7f3"
TOKEN = "CAIS-UNMISTAKABLE-TOKEN-91c"
PAIR = {"ALIBABA_CLOUD_ACCESS_KEY_ID": KEY_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET}


def write_ini(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def access_key_profile(name: str = "default", key_id: str = KEY_ID, secret: str = SECRET) -> str:
    return f"[{name}]\ntype = access_key\naccess_key_id = {key_id}\naccess_key_secret = {secret}\n"


def load_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        credential_source_from_env(environ).load()
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    assert TOKEN not in message
    return message


def test_environment_pair() -> None:
    source = credential_source_from_env(PAIR)
    assert source.kind == "environment"
    assert source.load() == Credentials(KEY_ID, SECRET)
    assert source.describe() == "environment (ALIBABA_CLOUD_ACCESS_KEY_ID)"


def test_environment_sts_token() -> None:
    source = credential_source_from_env({**PAIR, "ALIBABA_CLOUD_SECURITY_TOKEN": TOKEN})
    assert source.load() == Credentials(KEY_ID, SECRET, TOKEN)
    assert "ALIBABA_CLOUD_SECURITY_TOKEN" in source.describe()


def test_environment_wins_over_file(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "c.ini", access_key_profile(key_id="LTAIfromFILE0000"))
    source = credential_source_from_env({**PAIR, "ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini)})
    assert source.load().access_key_id == KEY_ID


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_ACCESS_KEY_ID"),
    ],
)
def test_half_a_pair_names_the_missing_variable(present: str, missing: str) -> None:
    message = load_error({present: PAIR[present], "HOME": "/nonexistent"})
    assert f"{missing} is not" in message


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    environ = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "",
        "HOME": str(tmp_path),
    }
    assert load_error(environ) == NO_CREDENTIALS


def test_nothing_at_all(tmp_path: Path) -> None:
    assert load_error({"HOME": str(tmp_path)}) == (
        "no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and"
        " ALIBABA_CLOUD_ACCESS_KEY_SECRET, or ALIBABA_CLOUD_CREDENTIALS_FILE"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "   "),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI 5tKEY"),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI5tKEY\n"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET + "\x00"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET + " "),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET + "é"),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", TOKEN + "\t"),
    ],
)
def test_unusable_environment_values(variable: str, value: str) -> None:
    message = load_error({**PAIR, variable: value})
    assert message.startswith(f"{variable} is not valid")


def test_default_file_under_home(tmp_path: Path) -> None:
    write_ini(tmp_path / ".alibabacloud" / "credentials.ini", access_key_profile())
    source = credential_source_from_env({"HOME": str(tmp_path)})
    expected = tmp_path / ".alibabacloud" / "credentials.ini"
    assert source == CredentialSource("file", path=str(expected), profile="default")
    assert source.load() == Credentials(KEY_ID, SECRET)
    assert source.describe() == f"file:{expected} [profile default]"


def test_named_file_and_profile(tmp_path: Path) -> None:
    body = access_key_profile("default", key_id="LTAIdefault00000") + access_key_profile("prod")
    ini = write_ini(tmp_path / "c.ini", body)
    environ = {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini), "ALIBABA_CLOUD_PROFILE": "prod"}
    source = credential_source_from_env(environ)
    assert source.load() == Credentials(KEY_ID, SECRET)
    assert source.describe() == f"file:{ini} [profile prod]"


def test_tilde_in_named_file_uses_home_from_environ(tmp_path: Path) -> None:
    write_ini(tmp_path / "creds.ini", access_key_profile())
    environ = {"ALIBABA_CLOUD_CREDENTIALS_FILE": "~/creds.ini", "HOME": str(tmp_path)}
    assert credential_source_from_env(environ).path == f"{tmp_path}/creds.ini"


def test_sts_profile_with_token(tmp_path: Path) -> None:
    body = access_key_profile().replace("access_key", "sts", 1) + f"security_token = {TOKEN}\n"
    ini = write_ini(tmp_path / "c.ini", body)
    source = credential_source_from_env({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini)})
    assert source.load() == Credentials(KEY_ID, SECRET, TOKEN)


def test_percent_in_secret_is_literal(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "c.ini", access_key_profile(secret="abc%(x)sdef%%"))
    source = credential_source_from_env({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini)})
    assert source.load().access_key_secret == "abc%(x)sdef%%"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[other]\ntype = access_key\n", "has no profile 'default' (ALIBABA_CLOUD_PROFILE);"),
        (access_key_profile().replace("type = access_key\n", ""), "type is missing"),
        (access_key_profile().replace("access_key\n", "ecs_ram_role\n", 1), "not supported"),
        (access_key_profile().replace("sts", "x").replace("access_key\n", "sts\n", 1), "token"),
        (access_key_profile().replace(f"access_key_id = {KEY_ID}\n", ""), "id is missing"),
        (access_key_profile().replace(SECRET, ""), "access_key_secret is empty"),
        (access_key_profile().replace(KEY_ID, "LTAI 5t"), "access_key_id is not valid"),
        (f"[default]\naccess_key_secret {SECRET}\n", "is not a valid INI file (line 2)"),
        (f"access_key_secret = {SECRET}\n", "is not a valid INI file (line 1)"),
        (access_key_profile() * 2, "is not a valid INI file (line 5)"),
    ],
)
def test_file_problems_are_named_without_secrets(tmp_path: Path, body: str, expected: str) -> None:
    ini = write_ini(tmp_path / "c.ini", body)
    message = load_error({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini)})
    assert message.startswith(f"credentials file {ini}")
    assert expected in message


def test_named_file_missing() -> None:
    message = load_error({"ALIBABA_CLOUD_CREDENTIALS_FILE": "/nonexistent/c.ini"})
    assert message == "ALIBABA_CLOUD_CREDENTIALS_FILE='/nonexistent/c.ini': file does not exist"


def test_file_removed_after_start(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "c.ini", access_key_profile())
    source = credential_source_from_env({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini)})
    ini.unlink()
    with pytest.raises(ConfigError, match="cannot be read: No such file"):
        source.load()


def test_load_rereads_a_fixed_file(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "c.ini", access_key_profile(key_id="LTAI bad id"))
    source = credential_source_from_env({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini)})
    with pytest.raises(ConfigError, match="access_key_id is not valid"):
        source.load()
    write_ini(ini, access_key_profile(key_id="LTAIrotated00000"))
    assert source.load().access_key_id == "LTAIrotated00000"


def test_repr_never_shows_secret_or_token(tmp_path: Path) -> None:
    creds = Credentials(KEY_ID, SECRET, TOKEN)
    source = CredentialSource("environment", captured=creds)
    for text in (repr(creds), str(creds), repr(source), source.describe()):
        assert SECRET not in text
        assert TOKEN not in text
        assert KEY_ID not in text
    assert "LTAI***" in repr(creds)


def test_short_key_id_is_masked_whole() -> None:
    assert Credentials("abc12", SECRET).masked_key_id() == "***"
    assert Credentials(KEY_ID, SECRET).masked_key_id() == "LTAI***"


def test_sources_without_values_refuse_to_load() -> None:
    with pytest.raises(ConfigError):
        CredentialSource("environment").load()
    with pytest.raises(ConfigError):
        CredentialSource("file").load()


# --- re-reading after a refusal (worker.pipeline.clients.credential_reloader) --------------


class _Client(DomainClient):
    """A client that only records the credentials it is given (it never sends)."""

    def __init__(self) -> None:
        super().__init__(endpoint="http://127.0.0.1:1", credentials=Credentials("a", "b"))
        self.given: list[Credentials] = []

    def set_credentials(self, credentials: CredentialsLike) -> None:
        assert isinstance(credentials, Credentials)
        self.given.append(credentials)


def test_the_reloader_reads_a_fixed_file_and_never_raises(tmp_path: Path) -> None:
    path = write_ini(tmp_path / "creds.ini", access_key_profile(secret="old-secret-1"))
    account = Account(
        "eu", "http://127.0.0.1:1", 5.0, "v3", CredentialSource("file", path=str(path))
    )
    client = _Client()
    reload = credential_reloader(account, client)

    path.write_text("[default]\nnot an ini line\n")  # the operator is still editing
    with structlog.testing.capture_logs() as logs:
        reload()
    assert client.given == []  # the credentials in use are kept
    (failed,) = [e for e in logs if e["event"] == "credentials.reload_failed"]
    assert failed["account"] == "eu"
    assert "not a valid INI file" in failed["error"]

    write_ini(path, access_key_profile(secret="new-secret-2"))
    reload()
    assert [c.access_key_secret for c in client.given] == ["new-secret-2"]
    assert "new-secret-2" not in scrubber.scrub_text("secret=new-secret-2")  # never logged
