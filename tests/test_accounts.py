"""Several accounts: named in the config file, never mixed in a batch, each with its own
limiter, fleet pause and send gate; an entry naming an unknown account is dead-lettered."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import PYTHON, RedisServer, worker_env
from tests.harness import (
    TEST_CREDENTIALS,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
)
from worker.api.client import DomainClient
from worker.config.accounts import Account
from worker.config.credentials import Credentials, CredentialSource
from worker.config.settings import Settings, load_settings
from worker.dev.mockapi.auth import AcceptedKey as StandInKeys
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.entries import DEFAULT_ACCOUNT
from worker.errors import ConfigError
from worker.pipeline.lanes import AccountClient
from worker.retry import RetryPolicy
from worker.store.enqueue import enqueue
from worker.store.keys import Keys

pytestmark = pytest.mark.anyio

EU = Credentials("LTAIeuexample0001", "eu-secret-value-1")
EU_KEYS = StandInKeys(EU.access_key_id, EU.access_key_secret)
ENV = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIhomeexample01", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s"}
# Throttled requests are retried for as long as the test needs, never dead-lettered.
PATIENT = RetryPolicy(
    max_attempts=1000, base_s=0.001, cap_s=0.005, probe_base_s=0.01, probe_cap_s=0.05
)


def config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "ackworker.toml"
    path.write_text(body, encoding="utf-8")
    return str(path)


# --- Settings -----------------------------------------------------------------------------


def test_named_accounts_inherit_what_they_do_not_set(tmp_path: Path) -> None:
    ini = tmp_path / "eu.ini"
    ini.write_text("[eu]\ntype = access_key\naccess_key_id = LTAIfile0001\naccess_key_secret = x\n")
    path = config(
        tmp_path,
        'endpoint = "https://domain.aliyuncs.com"\nrate_limit = 8.0\n'
        '[accounts.eu]\nendpoint = "https://domain-intl.aliyuncs.com/"\n'
        f'credentials_file = "{ini}"\ncredentials_profile = "eu"\n'
        '[accounts.cn-2]\nrate_limit = 2\nsignature = "v1"\n'
        'access_key_id_env = "CN_ID"\naccess_key_secret_env = "CN_SECRET"\n',
    )
    settings = load_settings(path, {**ENV, "CN_ID": "LTAIcnexample001", "CN_SECRET": "cn-s"})
    assert settings.account_names == ("default", "eu", "cn-2")
    eu, cn = settings.account("eu"), settings.account("cn-2")
    assert eu is not None
    assert cn is not None
    assert (eu.endpoint, eu.rate_limit, eu.signature) == (
        "https://domain-intl.aliyuncs.com",
        8.0,
        "v3",
    )
    assert eu.credentials.load().access_key_id == "LTAIfile0001"
    assert (cn.endpoint, cn.rate_limit, cn.signature) == ("https://domain.aliyuncs.com", 2.0, "v1")
    assert cn.credentials.load() == Credentials("LTAIcnexample001", "cn-s")
    assert cn.credentials.describe() == "environment (CN_ID, CN_SECRET)"
    default = settings.account()
    assert default is not None
    assert default.rate_limit == 8.0
    assert settings.account("mars") is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("accounts = 3", "accounts must be a table"),
        ("[accounts.default]\nrate_limit = 1", "accounts.default: the default account is"),
        ('[accounts."a b"]\nrate_limit = 1', "an account name must be"),
        ("[accounts.eu]\nrate = 1", "accounts.eu: unknown key 'rate'"),
        ("[accounts.eu]\nrate_limit = 0", "accounts.eu: rate_limit=0 is out of range"),
        ('[accounts.eu]\nendpoint = "ftp://x"', "accounts.eu: endpoint='ftp://x'"),
        ('[accounts.eu]\nsignature = "v2"', "accounts.eu: signature='v2' is not allowed"),
        (
            "[accounts.eu]\nrate_limit = 1",
            "accounts.eu: set credentials_file, or access_key_id_env",
        ),
        (
            '[accounts.eu]\naccess_key_id_env = "NOPE_ID"\naccess_key_secret_env = "NOPE_S"',
            "accounts.eu: access_key_id_env: environment variable NOPE_ID is not set",
        ),
        (
            '[accounts.eu]\ncredentials_file = "/x.ini"\naccess_key_id_env = "A"',
            "accounts.eu: set credentials_file, or access_key_id_env",
        ),
        (
            '[accounts.eu]\naccess_key_id_env = "EU_ID"\naccess_key_secret_env = "EU_S"\n'
            'security_token_env = "EU_NO_TOKEN"',
            "accounts.eu: security_token_env: environment variable EU_NO_TOKEN is not set",
        ),
        (
            '[accounts.eu]\naccess_key_id_env = "EU_ID"\naccess_key_secret_env = "EU_S"\n'
            "security_token_env = 3",
            "accounts.eu: security_token_env must name an environment variable",
        ),
        (
            '[accounts.eu]\naccess_key_id_env = "EU_ID"\naccess_key_secret_env = "EU_S"\n'
            'credentials_profile = "x"',
            "accounts.eu: credentials_profile goes with credentials_file only",
        ),
    ],
)
def test_a_bad_account_stops_start_up_naming_it(tmp_path: Path, body: str, expected: str) -> None:
    path = config(tmp_path, body + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {**ENV, "EU_ID": "LTAIeuexample0001", "EU_S": "s"})
    assert expected in str(caught.value)
    assert str(caught.value).startswith(path)


async def test_check_config_lists_accounts_without_secrets(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '[accounts.eu]\nrate_limit = 3\naccess_key_id_env = "EU_ID"\n'
        'access_key_secret_env = "EU_SECRET"\n',
    )
    env = worker_env(**ENV, EU_ID=EU.access_key_id, EU_SECRET=EU.access_key_secret)
    done = await anyio.run_process(
        [PYTHON, "-m", "worker", "check-config", "--config", path], env=env, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    [line] = [x for x in out.splitlines() if x.startswith("accounts.eu")]
    assert ", 3/s, v3, key LTAI***, environment (EU_ID, EU_SECRET)" in line
    assert EU.access_key_secret not in out
    assert EU.access_key_id not in out

    bad = config(tmp_path, "[accounts.eu]\nrate_limit = -1\n")
    done = await anyio.run_process(
        [PYTHON, "-m", "worker", "check-config", "--config", bad], env=env, check=False
    )
    assert done.returncode == 2
    assert "accounts.eu: rate_limit=-1" in done.stderr.decode()


@pytest.fixture
async def apis() -> AsyncIterator[tuple[MockApi, MockApi]]:
    """Two stand-ins: the default account's, and eu's with its own key."""
    async with (
        serve_mock_api(fault_seed=1) as home,
        serve_mock_api(keys=EU_KEYS, fault_seed=2) as eu,
    ):
        yield home, eu


# --- Two accounts against two stand-ins ----------------------------------------------------


def two_account_settings(
    redis_server: RedisServer, prefix: str, home: MockApi, eu: MockApi
) -> Settings:
    source = CredentialSource("environment", captured=EU)
    return make_settings(
        redis_server.url,
        prefix,
        endpoint=home.url,
        named_accounts={"eu": Account("eu", eu.url, 1000.0, "v3", source)},
        max_attempts=1000,
    )


@asynccontextmanager
async def clients(home: MockApi, eu: MockApi) -> AsyncIterator[tuple[DomainClient, AccountClient]]:
    async with (
        DomainClient(endpoint=home.url, credentials=TEST_CREDENTIALS, pool_size=2) as home_client,
        DomainClient(endpoint=eu.url, credentials=EU, pool_size=2) as eu_client,
    ):
        yield home_client, AccountClient(eu_client)


async def test_each_account_is_acknowledged_at_its_own_endpoint_and_never_mixed(
    redis_server: RedisServer, redis: Redis, prefix: str, apis: tuple[MockApi, MockApi]
) -> None:
    home, eu = apis
    home_numbers = home.state.seed_random(150)
    eu_numbers = eu.state.seed_random(150)
    keys = Keys(prefix)
    for i in range(0, 150, 10):  # interleaved, so every read mixes the accounts
        await enqueue(redis, keys, home_numbers[i : i + 10])
        await enqueue(redis, keys, eu_numbers[i : i + 10], account="eu")
    await enqueue(redis, keys, ["m1", "m2"], account="mars")
    settings = two_account_settings(redis_server, prefix, home, eu)
    async with (
        clients(home, eu) as (home_client, eu_parts),
        running_worker(settings, redis, home_client, accounts={"eu": eu_parts}) as worker,
    ):
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="both accounts")
    assert set(home.state.confirmed_ids()) == set(home_numbers)
    assert set(eu.state.confirmed_ids()) == set(eu_numbers)
    # A number sent to the wrong account's endpoint would have come back short.
    assert await stream_fields(redis, keys.reconcile) == []
    dead = await stream_fields(redis, keys.dead)
    assert sorted((d["id"], d["reason"], d["account"]) for d in dead) == [
        ("m1", "unknown_account", "mars"),
        ("m2", "unknown_account", "mars"),
    ]
    assert "'mars' is not configured (known: default, eu)" in dead[0]["error"]
    assert worker.totals.dead["unknown_account"] == 2
    assert worker.totals.account_rates.keys() == {"default", "eu"}


async def limiter_state(redis: Redis, key: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = await redis.hgetall(key)  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_a_throttled_account_does_not_slow_the_other(
    redis_server: RedisServer, redis: Redis, prefix: str, apis: tuple[MockApi, MockApi]
) -> None:
    home, eu = apis
    eu.faults.update({"throttle_rate": 1.0, "retry_after_ms": 200})
    keys = Keys(prefix)
    eu_numbers = eu.state.seed_random(300)
    await enqueue(redis, keys, eu_numbers, account="eu")  # first in the stream
    home_numbers = home.state.seed_random(300)
    await enqueue(redis, keys, home_numbers)
    settings = two_account_settings(redis_server, prefix, home, eu)
    async with (
        clients(home, eu) as (home_client, eu_parts),
        running_worker(
            settings, redis, home_client, policy=PATIENT, accounts={"eu": eu_parts}
        ) as worker,
    ):

        async def home_done() -> bool:
            return home.state.confirmed_count == len(home_numbers)

        await wait_for(home_done, timeout_s=30, what="the default account to finish")
        assert eu.state.confirmed_count == 0
        eu_limiter = await limiter_state(redis, keys.limiter_for("eu"))
        home_limiter = await limiter_state(redis, keys.limiter)
        assert float(eu_limiter["last_cut"]) > 0  # eu's rate was cut, its fleet paused
        assert float(home_limiter.get("last_cut", 0)) == 0  # the default's never was
        assert float(eu_limiter["rate"]) < 1000.0
        # eu's lane holds at most its prefetch bound; the rest waits in eu's stream.
        assert worker.held <= settings.batch_size * (2 * settings.concurrency + 1)
        assert await redis.xlen(keys.account_stream("eu")) == len(eu_numbers)

        eu.faults.update({"throttle_rate": 0.0})
        await wait_for(lambda: drained(redis, prefix), timeout_s=60, what="eu to recover")
    assert set(eu.state.confirmed_ids()) == set(eu_numbers)
    assert await stream_fields(redis, keys.dead) == []
    # Each entry was moved to its account's stream once: none went round and round.
    for stream, count in (
        (keys.account_stream("eu"), 300),
        (keys.account_stream("default"), 300),
    ):
        info = await redis.xinfo_stream(stream)
        assert info["entries-added"] == count, stream


async def test_refused_credentials_pause_only_their_account(
    redis_server: RedisServer, redis: Redis, prefix: str, apis: tuple[MockApi, MockApi]
) -> None:
    home, eu = apis
    keys = Keys(prefix)
    eu_numbers = eu.state.seed_random(20)
    await enqueue(redis, keys, eu_numbers, account="eu")
    home_numbers = home.state.seed_random(100)
    await enqueue(redis, keys, home_numbers)
    settings = two_account_settings(redis_server, prefix, home, eu)
    wrong = dataclasses.replace(EU, access_key_secret="not-the-secret")
    fixed = anyio.Event()
    async with (
        DomainClient(endpoint=home.url, credentials=TEST_CREDENTIALS) as home_client,
        DomainClient(endpoint=eu.url, credentials=wrong) as eu_client,
    ):

        def reload() -> None:
            if fixed.is_set():
                eu_client.set_credentials(EU)

        eu_parts = AccountClient(eu_client, reload)
        async with running_worker(
            settings, redis, home_client, accounts={"eu": eu_parts}
        ) as worker:

            async def home_done() -> bool:
                return home.state.confirmed_count == len(home_numbers)

            await wait_for(home_done, what="the default account to flow")
            paused = worker.vitals()["paused"]
            assert paused == "eu:SignatureDoesNotMatch", paused
            assert worker.lanes[DEFAULT_ACCOUNT].gate.is_open  # the default account's gate
            assert eu.state.confirmed_count == 0

            fixed.set()
            await wait_for(lambda: drained(redis, prefix), what="eu after the fix")
            assert worker.vitals()["paused"] == ""
    assert set(eu.state.confirmed_ids()) == set(eu_numbers)
    assert await stream_fields(redis, keys.dead) == []


# --- As a real process -----------------------------------------------------------------


async def test_a_real_worker_serves_accounts_from_its_config_file(
    redis_server: RedisServer,
    redis: Redis,
    prefix: str,
    tmp_path: Path,
    apis: tuple[MockApi, MockApi],
) -> None:
    home, eu = apis
    path = config(
        tmp_path,
        f'[accounts.eu]\nendpoint = "{eu.url}"\nrate_limit = 200\n'
        'access_key_id_env = "EU_ID"\naccess_key_secret_env = "EU_SECRET"\n',
    )
    keys = Keys(prefix)
    home_numbers = home.state.seed_random(40)
    eu_numbers = eu.state.seed_random(40)
    await enqueue(redis, keys, home_numbers)
    await enqueue(redis, keys, eu_numbers, account="eu")
    env = worker_env(
        ACKWORKER_CONFIG=path,
        ACKWORKER_REDIS_URL=redis_server.url,
        ACKWORKER_KEY_PREFIX=prefix,
        ACKWORKER_ENDPOINT=home.url,
        ACKWORKER_LINGER_MS="20",
        ALIBABA_CLOUD_ACCESS_KEY_ID=TEST_CREDENTIALS.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=TEST_CREDENTIALS.access_key_secret,
        EU_ID=EU.access_key_id,
        EU_SECRET=EU.access_key_secret,
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = await anyio.open_process(
            [PYTHON, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="the backlog")
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0
    text = log_path.read_text()
    assert EU.access_key_secret not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    settled = [e for e in events if e["event"] == "batch.settled"]
    assert {e["account"] for e in settled} == {"default", "eu"}
    assert sum(e["confirmed"] for e in settled if e["account"] == "eu") == 40
    assert set(eu.state.confirmed_ids()) == set(eu_numbers)
    assert set(home.state.confirmed_ids()) == set(home_numbers)


async def test_entries_a_crashed_router_read_are_claimed_and_moved(
    redis_server: RedisServer, redis: Redis, prefix: str, apis: tuple[MockApi, MockApi]
) -> None:
    home, eu = apis
    keys = Keys(prefix)
    home_numbers = home.state.seed_random(30)
    eu_numbers = eu.state.seed_random(30)
    await enqueue(redis, keys, home_numbers)
    await enqueue(redis, keys, eu_numbers, account="eu")
    # A replica read them all and died before moving them: pending on the input stream.
    read = await redis.xreadgroup(keys.group, "dead-router", {keys.tasks: ">"}, count=100)
    assert len(read[0][1]) == 60
    settings = two_account_settings(redis_server, prefix, home, eu)
    async with (
        clients(home, eu) as (home_client, eu_parts),
        running_worker(settings, redis, home_client, accounts={"eu": eu_parts}),
    ):
        await wait_for(lambda: drained(redis, prefix), what="the claimed entries")
    assert set(home.state.confirmed_ids()) == set(home_numbers)
    assert set(eu.state.confirmed_ids()) == set(eu_numbers)
    summary = await redis.xpending(keys.tasks, keys.group)
    assert summary["pending"] == 0


async def test_streams_of_accounts_no_longer_routed_are_drained(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    """A fleet that ran default and eu leaves both accounts' streams behind; a worker that
    now runs only the default account moves default's entries back and dead-letters eu's."""
    async with serve_mock_api(fault_seed=1) as home:
        keys = Keys(prefix)
        numbers = home.state.seed_random(25)
        await redis.sadd(keys.accounts, "default", "eu")  # type: ignore[misc]
        for n in numbers:
            await redis.xadd(keys.account_stream("default"), {"id": n, "account": "default"})
        for n in ("e1", "e2"):
            await redis.xadd(keys.account_stream("eu"), {"id": n, "account": "eu"})
        settings = make_settings(redis_server.url, prefix, endpoint=home.url)
        async with (
            DomainClient(endpoint=home.url, credentials=TEST_CREDENTIALS) as client,
            running_worker(settings, redis, client),
        ):
            await wait_for(lambda: drained(redis, prefix), what="the left-behind streams")
        assert set(home.state.confirmed_ids()) == set(numbers)
        dead = await stream_fields(redis, keys.dead)
        assert sorted((d["id"], d["reason"]) for d in dead) == [
            ("e1", "unknown_account"),
            ("e2", "unknown_account"),
        ]
