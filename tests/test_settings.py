"""Settings load from defaults < TOML file < environment, and every bad value is one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.config.describe import describe_settings
from worker.config.settings import (
    ENV_NAMES,
    ENV_PREFIX,
    SETTINGS_DOC,
    Settings,
    load_settings,
    mask_url_password,
)
from worker.errors import ConfigError
from worker.store.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "ackworker.toml"
KEY_ID = "LTAI5tKEYIDforTESTS"
SECRET = "Zq9-UNMISTAKABLE-SECRET-7f3"
TOKEN = "CAIS-UNMISTAKABLE-TOKEN-91c"
REDIS_PASSWORD = "Rp4-UNMISTAKABLE-REDIS-PW"
ENVIRON = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": KEY_ID,
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
    "HOME": "/nonexistent",
}
NAMES = [name for name, _, _, _ in SETTINGS_DOC]


def load(extra: dict[str, str] | None = None, path: Path | None = None) -> Settings:
    return load_settings(str(path) if path else None, {**ENVIRON, **(extra or {})})


def config_error(extra: dict[str, str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(extra, path)
    message = str(info.value)
    assert "\n" not in message
    assert "\r" not in message
    for secret in (SECRET, TOKEN, REDIS_PASSWORD):
        assert secret not in message
    return message


def toml_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(body, encoding="utf-8")
    return path


# --- Precedence and sources --------------------------------------------------------------


def test_defaults() -> None:
    settings = load()
    assert settings == Settings(credentials=settings.credentials)
    assert dict(settings.sources) == dict.fromkeys(NAMES, "default")
    assert settings.connect_timeout_s == 5.0


def test_file_overrides_defaults_and_env_overrides_file(tmp_path: Path) -> None:
    path = toml_file(tmp_path, 'batch_size = 50\nlinger_ms = 10\nlog_level = "debug"\n')
    settings = load({"ACKWORKER_BATCH_SIZE": "7", "ACKWORKER_LANG": "zh"}, path)
    assert (settings.batch_size, settings.linger_ms, settings.lang) == (7, 10, "zh")
    assert settings.sources["batch_size"] == "env:ACKWORKER_BATCH_SIZE"
    assert settings.sources["lang"] == "env:ACKWORKER_LANG"
    assert settings.sources["linger_ms"] == f"file:{path}"
    assert settings.sources["log_level"] == f"file:{path}"
    assert settings.sources["concurrency"] == "default"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "batch_size = 50\n")
    assert load({"ACKWORKER_CONFIG": str(path)}).batch_size == 50
    assert load({"ACKWORKER_CONFIG": ""}).batch_size == 100


def test_config_argument_wins_over_environment(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "batch_size = 50\n")
    assert load({"ACKWORKER_CONFIG": "/nonexistent.toml"}, path).batch_size == 50


def test_unknown_prefixed_variables_are_ignored() -> None:
    assert load({"ACKWORKER_NO_SUCH_SETTING": "1"}) == load()


def test_credentials_are_loaded_at_start() -> None:
    settings = load({"ALIBABA_CLOUD_SECURITY_TOKEN": TOKEN})
    assert settings.credentials.load().security_token == TOKEN
    message = config_error({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI bad"})
    assert message.startswith("ALIBABA_CLOUD_ACCESS_KEY_ID is not valid")


def test_settings_are_frozen_and_sources_read_only() -> None:
    settings = load()
    with pytest.raises(FrozenInstanceError):
        settings.batch_size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.sources["batch_size"] = "env:X"  # type: ignore[index]


def test_connect_timeout_is_capped_by_http_timeout() -> None:
    assert load({"ACKWORKER_HTTP_TIMEOUT_S": "2.5"}).connect_timeout_s == 2.5


def test_default_consumer_is_valid_even_for_odd_hostnames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "odd host\t" * 30)
    consumer = load().consumer
    assert len(consumer) <= 128
    assert consumer.endswith(f"-{os.getpid()}")
    assert load({"ACKWORKER_CONSUMER": consumer}).consumer == consumer


# --- Values: accepted and normalized -----------------------------------------------------

GOOD = [
    ("redis_url", "rediss://user:pw@redis.example:6380/2", "rediss://user:pw@redis.example:6380/2"),
    ("redis_url", "unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ("redis_url", "redis://[::1]:6379", "redis://[::1]:6379"),
    ("key_prefix", "{ack}:v1.x-y_z", "{ack}:v1.x-y_z"),
    ("key_prefix", "{ack}", "{ack}"),
    ("key_prefix", "ack", "ack"),
    ("consumer", "worker-7", "worker-7"),
    ("endpoint", "http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("signature", "v1", "v1"),
    ("lang", "zh", "zh"),
    ("user_client_ip", "2001:DB8::1", "2001:db8::1"),
    ("user_client_ip", "", None),
    ("batch_size", "1000", 1000),
    ("linger_ms", "0", 0),
    ("rate_limit", "1e3", 1000.0),
    ("rate_limit", "25", 25.0),
    ("rate_limit", "0.5", 0.5),
    ("dedupe_ttl_s", "0", 0),
    ("shutdown_grace_s", "0", 0.0),
    ("http_timeout_s", "300", 300.0),
    ("log_format", "console", "console"),
    ("log_level", "WARNING", "warning"),
    ("redis_ca_file", "/etc/ssl/redis-ca.pem", "/etc/ssl/redis-ca.pem"),
    ("redis_ca_file", "", None),
    ("redis_sentinels", "10.0.0.1:26379,sentinel-b:26379", "10.0.0.1:26379,sentinel-b:26379"),
    ("redis_sentinel_master", "primary-1", "primary-1"),
    ("redis_cluster", "true", True),
    ("redis_cluster", "No", False),
    ("http_host", "0.0.0.0", "0.0.0.0"),
    ("http_port", "9108", 9108),
    ("http_port", "", None),
    ("stats_interval_s", "5", 5.0),
    ("poll_interval_s", "0.5", 0.5),
    ("poll_page_size", "1000", 1000),
    ("poll_max_pages", "3", 3),
    ("poll_task_result_status", "3", 3),
    ("poll_task_result_status", "", None),
    ("poll_task_no", "T-1_a", "T-1_a"),
    ("poll_domain_name", "example.com", "example.com"),
    ("verify_shortfall", "no", False),
    ("verify_max_pages", "20", 20),
    ("verify_linger_ms", "250", 250),
    ("verify_max_wait_ms", "30000", 30000),
    ("verify_max_numbers", "500", 500),
]


@pytest.mark.parametrize(("name", "text", "expected"), GOOD)
def test_good_environment_values(name: str, text: str, expected: object) -> None:
    value = getattr(load({ENV_NAMES[name]: text}), name)
    assert value == expected
    assert type(value) is type(expected)


def test_float_settings_accept_toml_integers(tmp_path: Path) -> None:
    settings = load(path=toml_file(tmp_path, "rate_limit = 5\nshutdown_grace_s = 1\n"))
    assert (settings.rate_limit, settings.shutdown_grace_s) == (5.0, 1.0)
    assert isinstance(settings.rate_limit, float)


# --- Values: rejected with the variable, the value and what is allowed -------------------

BAD = [
    ("redis_url", "http://127.0.0.1:6379/0"),
    ("redis_url", "redis://"),
    ("redis_url", "redis://h:99999/0"),
    ("redis_url", "redis://h:0/0"),
    ("redis_url", "redis://h/zero"),
    ("redis_url", "unix://"),
    ("redis_url", "redis://h/0\n"),
    ("key_prefix", ""),
    ("key_prefix", "a b"),
    ("key_prefix", "x" * 65),
    ("key_prefix", "ä"),
    # Braces other than one non-empty {tag} spread the keys over cluster slots (CROSSSLOT).
    ("key_prefix", "{}"),
    ("key_prefix", "}x{"),
    ("key_prefix", "{}{}"),
    ("key_prefix", "{a}{"),
    ("key_prefix", "x{}"),
    ("key_prefix", "{a}{b}"),
    ("key_prefix", "a}"),
    ("key_prefix", "{a"),
    ("consumer", ""),
    ("consumer", "a b"),
    ("consumer", "c" * 129),
    ("consumer", "a\x00"),
    ("endpoint", "ftp://example.com"),
    ("endpoint", "domain.aliyuncs.com"),
    ("endpoint", "https://"),
    ("endpoint", "https://x.example?y=1"),
    ("endpoint", "https://x.example/#f"),
    ("endpoint", "https://user@x.example"),
    ("signature", "v2"),
    ("signature", "V3"),
    ("lang", "fr"),
    ("user_client_ip", "1.2.3"),
    ("user_client_ip", "localhost"),
    ("batch_size", "0"),
    ("batch_size", "1001"),
    ("batch_size", "1e3"),
    ("batch_size", "10.5"),
    ("batch_size", "true"),
    ("batch_size", ""),
    ("batch_size", " 5"),
    ("batch_size", "1_000"),
    ("batch_size", "9" * 5000),
    ("linger_ms", "-1"),
    ("linger_ms", "60001"),
    ("concurrency", "0"),
    ("concurrency", "257"),
    ("rate_limit", "0"),
    ("rate_limit", "-1"),
    ("rate_limit", "100001"),
    ("rate_limit", "inf"),
    ("rate_limit", "nan"),
    ("rate_limit", "1e999"),
    ("rate_limit", "fast"),
    ("max_attempts", "0"),
    ("max_attempts", "101"),
    ("retry_budget_s", "-1"),
    ("retry_budget_s", "86401"),
    ("outage_after_s", "0"),
    ("outage_after_s", "3601"),
    ("claim_idle_ms", "999"),
    ("claim_idle_ms", "86400001"),
    ("dedupe_ttl_s", "-1"),
    ("dedupe_ttl_s", "2592001"),
    ("shutdown_grace_s", "-0.1"),
    ("shutdown_grace_s", "3601"),
    ("http_timeout_s", "0"),
    ("http_timeout_s", "300.5"),
    ("log_format", "text"),
    ("log_level", "verbose"),
    ("redis_ca_file", "a\x00b"),
    ("redis_sentinels", "host-without-port"),
    ("redis_sentinels", "a:1,b:99999"),
    ("redis_sentinel_master", "two words"),
    ("redis_cluster", "maybe"),
    ("http_host", "bad host"),
    ("http_port", "0"),
    ("http_port", "65536"),
    ("stats_interval_s", "0.5"),
    ("poll_interval_s", "0"),
    ("poll_page_size", "1001"),
    ("poll_max_pages", "0"),
    ("poll_task_result_status", "1"),
    ("poll_task_no", "has space"),
    ("poll_domain_name", "a b.com"),
    ("verify_shortfall", "maybe"),
    ("verify_max_pages", "0"),
    ("verify_linger_ms", "-1"),
    ("verify_max_wait_ms", "a while"),
    ("verify_max_numbers", "0"),
]


def test_every_setting_has_bad_values() -> None:
    assert {name for name, _ in BAD} == set(NAMES)


@pytest.mark.parametrize(("name", "text"), BAD)
def test_bad_environment_values(name: str, text: str) -> None:
    message = config_error({ENV_NAMES[name]: text})
    if name in ("redis_url", "endpoint"):
        text = mask_url_password(text)
    shown = repr(text) if len(repr(text)) <= 80 else repr(text)[:77] + "..."
    assert message.startswith(f"{ENV_NAMES[name]}={shown} ")
    assert ": must be " in message


def test_documented_messages(tmp_path: Path) -> None:
    assert config_error({"ACKWORKER_BATCH_SIZE": "0"}) == (
        "ACKWORKER_BATCH_SIZE='0' is out of range: must be an integer from 1 to 1000"
    )
    assert config_error({"ACKWORKER_SIGNATURE": "v2"}) == (
        "ACKWORKER_SIGNATURE='v2' is not allowed: must be one of v3, v1"
    )
    path = toml_file(tmp_path, "batch_size = 0\n")
    assert config_error(path=path) == (
        f"{path}: batch_size=0 is out of range: must be an integer from 1 to 1000"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("batch_size = true", "batch_size=True is not an integer: must be an integer from 1 to"),
        ('batch_size = "100"', "batch_size='100' is not an integer"),
        ("linger_ms = 10.5", "linger_ms=10.5 is not an integer"),
        ("rate_limit = inf", "rate_limit=inf is not a finite number: must be a number greater"),
        ('rate_limit = "10"', "rate_limit='10' is not a number"),
        ("http_timeout_s = 0", "http_timeout_s=0 is out of range"),
        ("signature = 3", "signature=3 is not a string: must be one of v3, v1"),
        ('redis_url = ["redis://h"]', "redis_url=['redis://h'] is not a string"),
    ],
)
def test_wrong_toml_types(tmp_path: Path, body: str, expected: str) -> None:
    path = toml_file(tmp_path, body + "\n")
    assert config_error(path=path).startswith(f"{path}: {expected}")


def test_long_values_are_cut_to_80_characters() -> None:
    message = config_error({"ACKWORKER_CONSUMER": "x " * 100})
    shown = message.removeprefix("ACKWORKER_CONSUMER=").split(" is not valid")[0]
    assert len(shown) == 80
    assert shown.endswith("...")


@given(name=st.sampled_from(NAMES), text=st.text(max_size=200))
def test_any_text_loads_or_fails_in_one_named_line(name: str, text: str) -> None:
    try:
        load({ENV_NAMES[name]: text})
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{ENV_NAMES[name]}=")
        assert "\n" not in message
        assert len(message) < 250


@given(st.integers())
def test_integer_bounds_are_exact(number: int) -> None:
    try:
        assert load({"ACKWORKER_BATCH_SIZE": str(number)}).batch_size == number
    except ConfigError:
        assert not 1 <= number <= 1000
    else:
        assert 1 <= number <= 1000


# --- File problems -----------------------------------------------------------------------


def test_missing_file_names_its_origin(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(path=missing) == f"config file {str(missing)!r} does not exist"
    message = config_error({"ACKWORKER_CONFIG": str(missing)})
    assert message == f"config file {str(missing)!r} (ACKWORKER_CONFIG) does not exist"


def test_unreadable_file(tmp_path: Path) -> None:
    assert config_error(path=tmp_path).endswith("cannot be read: Is a directory")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b"batch_size = 1\n\xff\n")
    assert config_error(path=path).endswith("is not UTF-8 text")


def test_toml_syntax_error(tmp_path: Path) -> None:
    message = config_error(path=toml_file(tmp_path, "batch_size = 1\nlinger_ms =\n"))
    assert "is not valid TOML" in message
    assert "line 2" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("batch_sise = 5", "unknown setting 'batch_sise' (did you mean 'batch_size'?)"),
        ("ACKWORKER_LINGER_MS = 5", "unknown setting 'ACKWORKER_LINGER_MS' (did you mean 'linger"),
        ('[redis]\nurl = "redis://h"', "unknown setting 'redis'"),
        ("zzz = 1", "unknown setting 'zzz'"),
    ],
)
def test_unknown_keys(tmp_path: Path, body: str, expected: str) -> None:
    path = toml_file(tmp_path, body + "\n")
    assert config_error(path=path).startswith(f"{path}: {expected}")


def test_shipped_config_loads_as_the_defaults() -> None:
    from_file = load(path=SHIPPED)
    assert from_file == load()
    in_file = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    # Settings without a default value are shown commented out.
    unset = {"consumer", "user_client_ip", "redis_ca_file", "redis_sentinels", "http_port"}
    unset |= {"poll_task_result_status", "poll_task_no", "poll_domain_name"}
    assert set(in_file) == set(NAMES) - unset
    assert {from_file.sources[name] for name in in_file} == {f"file:{SHIPPED}"}


def test_shipped_config_mentions_every_setting() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    for name in NAMES:
        assert f"\n{name} = " in text or f"\n# {name} = " in text


# --- Tables for docs ---------------------------------------------------------------------


def test_tables_cover_every_field_in_order() -> None:
    field_names = [f.name for f in fields(Settings)]
    assert field_names[: len(NAMES)] == NAMES
    assert field_names[len(NAMES) :] == ["credentials", "named_accounts", "sources"]
    assert dict(ENV_NAMES) == {name: ENV_PREFIX + name.upper() for name in NAMES}


def test_documented_defaults_are_the_real_ones() -> None:
    settings = load()
    for name, env_name, default, doc in SETTINGS_DOC:
        assert env_name == ENV_NAMES[name]
        assert doc.endswith(".")
        if default == "unset":
            assert getattr(settings, name) is None
        elif name != "consumer":
            assert tomllib.loads(f"v = {default}")["v"] == getattr(settings, name)


# --- Secrets -----------------------------------------------------------------------------

REDIS_URL = f"redis://ackuser:{REDIS_PASSWORD}@redis.example:6379/0"


def test_secrets_absent_from_repr_and_description() -> None:
    settings = load({"ALIBABA_CLOUD_SECURITY_TOKEN": TOKEN, "ACKWORKER_REDIS_URL": REDIS_URL})
    texts = [repr(settings), str(settings), describe_settings(settings)]
    for text in texts:
        for secret in (SECRET, TOKEN, REDIS_PASSWORD, KEY_ID):
            assert secret not in text
        assert "redis://ackuser:***@redis.example:6379/0" in text


def test_redis_password_masked_in_errors(tmp_path: Path) -> None:
    bad = REDIS_URL.replace("redis://", "http://")
    message = config_error({"ACKWORKER_REDIS_URL": bad})
    assert message.startswith("ACKWORKER_REDIS_URL='http://ackuser:***@redis.example:6379/0' has")
    path = toml_file(tmp_path, f'redis_url = "{bad}"\n')
    assert "ackuser:***@" in config_error(path=path)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:p@ss/w#rd@h/0", "redis://user:***@h/0"),
        ("redis://loneword@h", "redis://***@h"),
        ("unix:///s.sock?db=0&password=pw", "unix:///s.sock?db=0&password=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


@given(password=st.text(min_size=1), user=st.text(alphabet="abcxyz", max_size=5))
def test_masking_hides_any_password(password: str, user: str) -> None:
    secret = "Pw9" + password
    for url in (f"rediss://{user}:{secret}@h.example:6380/1", f"unix:///s?password={secret}"):
        assert secret not in mask_url_password(url)


# --- describe_settings -------------------------------------------------------------------


def test_description_is_aligned_with_sources(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "linger_ms = 10\n")
    settings = load({"ACKWORKER_BATCH_SIZE": "7"}, path)
    lines = describe_settings(settings).splitlines()
    assert len({line.index(" = ") for line in lines}) == 1
    by_name = {line.split(" = ")[0].strip(): line for line in lines}
    credential_lines = ["access_key_id", "access_key_secret", "security_token", "credentials"]
    assert list(by_name) == NAMES + credential_lines
    assert by_name["batch_size"].endswith("(env:ACKWORKER_BATCH_SIZE)")
    assert by_name["linger_ms"].endswith(f"(file:{path})")
    assert by_name["user_client_ip"].split(" = ")[1].startswith("unset ")
    assert by_name["access_key_id"].endswith("= LTAI***")
    assert by_name["access_key_secret"].endswith("= ***")
    assert lines[-1].endswith("= environment (ALIBABA_CLOUD_ACCESS_KEY_ID)")
    assert len({by_name[name].index("  (") for name in NAMES}) == 1


def test_description_names_a_credentials_file(tmp_path: Path) -> None:
    ini = tmp_path / "c.ini"
    ini.write_text(
        f"[ops]\ntype = access_key\naccess_key_id = {KEY_ID}\naccess_key_secret = {SECRET}\n",
        encoding="utf-8",
    )
    environ = {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini), "ALIBABA_CLOUD_PROFILE": "ops"}
    text = describe_settings(load_settings(None, environ))
    assert text.splitlines()[-1].endswith(f"= file:{ini} [profile ops]")
    assert SECRET not in text


# --- The command line --------------------------------------------------------------------


def run_check_config(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "check-config"],
        cwd=ROOT,
        env={**ENVIRON, **extra},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_bad_value_exits_2_with_one_line() -> None:
    result = run_check_config({"ACKWORKER_BATCH_SIZE": "0"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "ackworker: ACKWORKER_BATCH_SIZE='0' is out of range: must be an integer from 1 to 1000"
    ]


@pytest.mark.parametrize("prefix", ["{}", "}x{", "{}{}", "{a}{", "x{}"])
def test_check_config_refuses_a_prefix_without_one_hash_tag(prefix: str) -> None:
    result = run_check_config({"ACKWORKER_KEY_PREFIX": prefix, "ACKWORKER_REDIS_CLUSTER": "true"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"ackworker: ACKWORKER_KEY_PREFIX={prefix!r} has ")
    assert "hash tag" in line


def test_cluster_keys_refuse_a_prefix_without_one_hash_tag() -> None:
    assert Keys.for_prefix("{ack}", cluster=True).tasks == "{ack}:tasks"
    assert Keys.for_prefix("ack", cluster=True).dead == "{ack}:dead"
    for prefix in ("{}", "}x{", "{}{}", "{a}{", "x{}"):
        with pytest.raises(ConfigError, match="hash tag"):
            Keys.for_prefix(prefix, cluster=True)


def test_check_config_prints_masked_settings() -> None:
    result = run_check_config({"ACKWORKER_REDIS_URL": REDIS_URL})
    assert result.returncode == 0, result.stderr
    assert "redis_url" in result.stdout
    for secret in (SECRET, REDIS_PASSWORD):
        assert secret not in result.stdout + result.stderr
