"""The pipeline on Redis beyond one box: TLS with an ACL user, Sentinel (and a failover), Cluster.

Each topology is started for real (see :mod:`tests.topologies`) once per module; every test
gets its own key prefix. The worker runs in-process with a client built by ``open_redis`` for
that mode, and every end-to-end test ends with the invariant: each number is still in the
stream, confirmed at the API, dead-lettered or listed for reconciliation.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from tests.conftest import PYTHON, REPO, worker_env
from tests.harness import (
    FAST_POLICY,
    TEST_CREDENTIALS,
    ScriptedApi,
    backlog,
    drained,
    make_settings,
    running_worker,
    stream_fields,
    wait_for,
)
from tests.test_end_to_end import assert_invariant
from tests.topologies import MASTER_NAME, ClusterSetup, SentinelSetup, TlsRedis
from worker.api.client import AckResult, DomainClient
from worker.config.accounts import Account
from worker.config.credentials import CredentialSource
from worker.config.settings import Settings
from worker.config.topology import keys_for, open_redis
from worker.dev.mockapi.server import MockApi, serve_mock_api
from worker.dev.sandbox import free_port
from worker.entries import DEFAULT_ACCOUNT
from worker.errors import ConfigError, PermanentApiError, ThrottledError
from worker.pipeline.lanes import AccountClient, WorkerParts
from worker.pipeline.runner import Worker
from worker.store.connection import ClusterUnavailableError, RedisClient, RedisTarget
from worker.store.connection import connect as store_connect
from worker.store.enqueue import enqueue
from worker.store.keys import Keys
from worker.store.settle import Settlement, Settler

pytestmark = pytest.mark.anyio

_prefixes = iter(range(1_000_000))


@pytest.fixture
def tagged() -> str:
    """A key prefix of its own, already a cluster hash tag."""
    return f"{{m{os.getpid()}x{next(_prefixes)}}}"


@pytest.fixture
async def api() -> AsyncIterator[MockApi]:
    async with serve_mock_api(fault_seed=5) as server:
        yield server


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ackworker-topologies-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
def tls_redis(workdir: Path) -> Iterator[TlsRedis]:
    (workdir / "tls").mkdir()
    server = TlsRedis(workdir / "tls")
    yield server
    server.close()


@pytest.fixture(scope="module")
def sentinels(workdir: Path) -> Iterator[SentinelSetup]:
    (workdir / "sentinel").mkdir()
    setup = SentinelSetup(workdir / "sentinel")
    yield setup
    setup.close()


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[ClusterSetup]:
    (workdir / "cluster").mkdir()
    setup = ClusterSetup(workdir / "cluster")
    yield setup
    setup.close()


def tls_settings(server: TlsRedis, prefix: str, **overrides: Any) -> Settings:
    return make_settings(server.url(), prefix, redis_ca_file=str(server.tls.ca_cert), **overrides)


def sentinel_settings(setup: SentinelSetup, prefix: str, **overrides: Any) -> Settings:
    # The URL's host and port are not used with Sentinel: the Sentinels name the primary.
    return make_settings(
        "redis://unused.invalid:1/0",
        prefix,
        redis_sentinels=setup.addresses,
        redis_sentinel_master=MASTER_NAME,
        **overrides,
    )


def cluster_settings(setup: ClusterSetup, prefix: str, **overrides: Any) -> Settings:
    # Start from a node that does not serve the prefix's slot, so routing is exercised.
    start = (setup.owner_of(Keys(prefix).tasks) + 1) % len(setup.nodes)
    return make_settings(setup.url_of(start), prefix, redis_cluster=True, **overrides)


@pytest.fixture
async def opened() -> AsyncIterator[list[RedisClient]]:
    """Clients opened by a test; closed after it."""
    clients: list[RedisClient] = []
    yield clients
    for client in clients:
        await client.aclose()


def connect(clients: list[RedisClient], settings: Settings) -> RedisClient:
    client = open_redis(settings, max_connections=settings.concurrency * 2 + 4)
    clients.append(client)
    return client


async def run_until_drained(
    settings: Settings, redis: RedisClient, api: MockApi, *, timeout_s: float = 30
) -> Worker:
    async with (
        DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as client,
        running_worker(settings, redis, client) as worker,
    ):
        prefix = settings.key_prefix
        await wait_for(lambda: drained(redis, prefix), timeout_s=timeout_s, what="backlog 0")
    return worker


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_with_the_ca_runs_the_pipeline(
    tls_redis: TlsRedis, api: MockApi, prefix: str, opened: list[RedisClient]
) -> None:
    settings = tls_settings(tls_redis, prefix, endpoint=api.url)
    redis = connect(opened, settings)
    numbers = api.state.seed_random(120)
    await enqueue(redis, keys_for(settings), numbers + numbers[:10])
    worker = await run_until_drained(settings, redis, api)
    await assert_invariant(redis, prefix, api, numbers)
    assert set(api.state.confirmed_ids()) == set(numbers)
    assert worker.totals.duplicates == 10


async def test_tls_without_the_ca_is_refused(
    tls_redis: TlsRedis, prefix: str, opened: list[RedisClient]
) -> None:
    redis = connect(opened, make_settings(tls_redis.url(), prefix))  # system CAs only
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await redis.ping()


async def test_tls_certificate_for_another_host_name_is_refused(
    tls_redis: TlsRedis, prefix: str, opened: list[RedisClient]
) -> None:
    # The certificate names 127.0.0.1 only; "localhost" reaches the same server.
    settings = tls_settings(tls_redis, prefix)
    settings = make_settings(
        tls_redis.url(host="localhost"), prefix, redis_ca_file=settings.redis_ca_file
    )
    redis = connect(opened, settings)
    with pytest.raises(RedisConnectionError, match=r"match|mismatch"):
        await redis.ping()


async def test_tls_wrong_password_stops_start_up_without_showing_it(
    tls_redis: TlsRedis, prefix: str, opened: list[RedisClient]
) -> None:
    wrong = "not-the-Pa55word"
    settings = make_settings(
        tls_redis.url(password=wrong), prefix, redis_ca_file=str(tls_redis.tls.ca_cert)
    )
    redis = connect(opened, settings)
    clients = {DEFAULT_ACCOUNT: AccountClient(ScriptedApi())}
    parts = WorkerParts(redis=redis, keys=keys_for(settings), policy=FAST_POLICY, clients=clients)
    with pytest.raises(ConfigError, match="ACKWORKER_REDIS_URL") as caught:
        await Worker(settings, parts).run()
    assert wrong not in str(caught.value)
    assert TlsRedis.PASSWORD not in str(caught.value)


# --- Sentinel --------------------------------------------------------------------------------


async def test_sentinel_pool_is_bounded_and_blocking(
    sentinels: SentinelSetup, prefix: str, opened: list[RedisClient]
) -> None:
    redis = connect(opened, sentinel_settings(sentinels, prefix, concurrency=3))
    assert isinstance(redis, Redis)
    pool = redis.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == 3 * 2 + 4
    assert await redis.ping()


# The primary is SIGKILLed under the worker's pooled connections. redis-py sometimes drops
# such a connection (its socket already reset) without closing it, and the interpreter warns
# when it is collected: in this test, or, later, in whichever test runs then. Collected here,
# under this filter, those warnings stay with the failover that causes them.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_sentinel_runs_the_pipeline_through_a_failover(
    sentinels: SentinelSetup, api: MockApi, prefix: str, opened: list[RedisClient]
) -> None:
    settings = sentinel_settings(sentinels, prefix, endpoint=api.url)
    redis = connect(opened, settings)
    numbers = api.state.seed_random(400)
    await enqueue(redis, keys_for(settings), numbers)
    assert isinstance(redis, Redis)
    assert await redis.wait(1, 5000) == 1  # the replica has every entry before the primary dies
    api.faults.update({"latency_ms": 20})
    old_port = sentinels.primary.port
    async with (
        DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as client,
        running_worker(settings, redis, client),
    ):

        async def some_confirmed() -> bool:
            return api.state.confirmed_count >= 40

        await wait_for(some_confirmed, what="some numbers confirmed on the first primary")
        sentinels.primary.proc.send_signal(signal.SIGKILL)

        async def failed_over() -> bool:
            ports = [s.primary_port() for s in sentinels.sentinels]
            return ports == [sentinels.replica.port] * len(ports)

        # Two Sentinels may split their votes; a new election follows 2 x failover-timeout.
        await wait_for(failed_over, timeout_s=30, what="the Sentinels to promote the replica")
        await wait_for(lambda: drained(redis, prefix), timeout_s=30, what="backlog 0")
    assert sentinels.primary.port == old_port
    await assert_invariant(redis, prefix, api, numbers)
    assert set(api.state.confirmed_ids()) == set(numbers)
    gc.collect()


# --- Cluster ---------------------------------------------------------------------------------


async def test_cluster_runs_the_pipeline_with_duplicates_dead_letters_and_shortfalls(
    cluster: ClusterSetup, api: MockApi, tagged: str, opened: list[RedisClient]
) -> None:
    settings = cluster_settings(cluster, tagged, endpoint=api.url, batch_size=20, concurrency=3)
    redis = connect(opened, settings)
    assert isinstance(redis, RedisCluster)
    keys = keys_for(settings)
    numbers = api.state.seed_random(300)
    unknown = [f"{i:032x}" for i in range(7)]
    await enqueue(redis, keys, numbers + unknown + numbers[:25])
    for raw in ({b"id": b""}, {b"id": b"x" * 65}, {b"task_no": b"T-1"}):
        await redis.xadd(keys.tasks, raw)  # type: ignore[arg-type]
    api.faults.update({"throttle_rate": 0.05, "error_rate": 0.05})
    worker = await run_until_drained(settings, redis, api)
    await assert_invariant(redis, tagged, api, numbers + unknown)
    assert set(api.state.confirmed_ids()) == set(numbers)
    assert worker.totals.duplicates == 25
    assert worker.totals.shortfall == len(unknown)
    dead = await stream_fields(redis, keys.dead)
    assert sorted(d["reason"] for d in dead) == ["invalid_id"] * 3
    reconciled = [
        n for r in await stream_fields(redis, keys.reconcile) for n in json.loads(r["ids"])
    ]
    assert set(unknown) <= set(reconciled)

    # A second pass: the dedupe memory (Lua over the seen buckets) answers without the API.
    requests_before = api.stats()["requests_total"]
    await enqueue(redis, keys, numbers[:50])
    again = await run_until_drained(settings, redis, api)
    assert again.totals.duplicates == 50
    assert api.stats()["requests_total"] == requests_before


async def test_cluster_rejected_and_throttled_paths(
    cluster: ClusterSetup, tagged: str, opened: list[RedisClient]
) -> None:
    settings = cluster_settings(cluster, tagged)
    redis = connect(opened, settings)
    bad = f"{999:032x}"
    numbers = [f"{i:032x}" for i in range(1, 40)]

    def behave(ids: Sequence[str], call_no: int) -> AckResult:
        if call_no == 1:
            raise ThrottledError("Throttling.User", "slow down", retry_after_s=0.01)
        if bad in ids:
            raise PermanentApiError("InvalidParameter", "bad number")
        return AckResult(len(set(ids)), f"req-{call_no}")

    scripted = ScriptedApi(behave)
    await enqueue(redis, keys_for(settings), [*numbers, bad])
    async with running_worker(settings, redis, scripted) as worker:
        await wait_for(lambda: drained(redis, tagged), what="backlog 0")
    dead = await stream_fields(redis, keys_for(settings).dead)
    assert [(d["id"], d["reason"]) for d in dead] == [(bad, "rejected")]
    assert worker.totals.confirmed == len(numbers)
    assert await redis.exists(keys_for(settings).limiter) == 1  # the shared limiter's state
    assert await redis.exists(keys_for(settings).inflight) == 0  # every lease released


async def test_cluster_routes_two_accounts_within_the_hash_tag(
    cluster: ClusterSetup, api: MockApi, tagged: str, opened: list[RedisClient]
) -> None:
    """The router's move touches the input and every account stream in one script: all in the
    prefix's slot. Both accounts are served by the one stand-in here."""
    eu = Account("eu", api.url, 1000.0, "v3", CredentialSource("environment", TEST_CREDENTIALS))
    settings = cluster_settings(cluster, tagged, endpoint=api.url, named_accounts={"eu": eu})
    redis = connect(opened, settings)
    keys = keys_for(settings)
    assert keys.account_stream("eu") == f"{tagged}:tasks:eu"
    home, away = api.state.seed_random(60), api.state.seed_random(60)
    await enqueue(redis, keys, home)
    await enqueue(redis, keys, away, account="eu")
    async with (
        DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as client,
        running_worker(settings, redis, client, accounts={"eu": AccountClient(client)}),
    ):
        await wait_for(lambda: drained(redis, tagged), timeout_s=30, what="both accounts")
    assert set(api.state.confirmed_ids()) == set(home + away)
    for account, count in (("default", 60), ("eu", 60)):
        info: Any = await redis.xinfo_stream(keys.account_stream(account))
        assert info["entries-added"] == count


async def test_cluster_keys_share_one_slot_only_with_the_hash_tag(
    cluster: ClusterSetup, prefix: str, opened: list[RedisClient]
) -> None:
    settings = cluster_settings(cluster, "{" + prefix + "}")
    redis = connect(opened, settings)
    assert keys_for(make_settings("redis://h:1/0", prefix, redis_cluster=True)).prefix == (
        "{" + prefix + "}"
    )
    untagged = Settler(redis, Keys(prefix), dedupe_ttl_s=60, consumer="c1")
    with pytest.raises(RedisClusterException, match="same key slot"):
        await untagged.settle(Settlement(dead=[{"id": "x", "reason": "test"}]))
    tagged_settler = Settler(redis, keys_for(settings), dedupe_ttl_s=60, consumer="c1")
    await tagged_settler.settle(Settlement(dead=[{"id": "x", "reason": "test"}]))
    assert await backlog(redis, settings.key_prefix) == 0
    assert await redis.xlen(keys_for(settings).dead) == 1


async def test_cluster_outage_mid_run_is_waited_out(
    cluster: ClusterSetup, api: MockApi, tagged: str, opened: list[RedisClient]
) -> None:
    settings = cluster_settings(cluster, tagged, endpoint=api.url)
    redis = connect(opened, settings)
    numbers = api.state.seed_random(400)
    await enqueue(redis, keys_for(settings), numbers)
    api.faults.update({"latency_ms": 100})
    async with (
        DomainClient(endpoint=api.url, credentials=TEST_CREDENTIALS, pool_size=4) as client,
        running_worker(settings, redis, client),
    ):

        async def some_confirmed() -> bool:
            return api.state.confirmed_count >= 20

        await wait_for(some_confirmed, what="some numbers confirmed before the outage")
        assert await backlog(redis, tagged) > 0
        await anyio.to_thread.run_sync(cluster.restart)
        await wait_for(lambda: drained(redis, tagged), timeout_s=40, what="backlog 0")
    await assert_invariant(redis, tagged, api, numbers)
    assert set(api.state.confirmed_ids()) == set(numbers)


async def test_a_cluster_client_whose_seeds_were_all_dropped_still_waits_and_reconnects(
    opened: list[RedisClient],
) -> None:
    # redis-py drops a seed node each time a command to it fails; after an outage long
    # enough to drop every one, learning the slot map must still be "unavailable, wait"
    # (and possible again), not a bare RedisClusterException that ends the worker.
    redis = store_connect(
        RedisTarget(f"redis://127.0.0.1:{free_port()}/0", cluster=True), max_connections=2
    )
    opened.append(redis)
    assert isinstance(redis, RedisCluster)
    redis.nodes_manager.startup_nodes.clear()
    with pytest.raises(ClusterUnavailableError, match="cannot be connected"):
        await redis.ping()
    assert redis.nodes_manager.startup_nodes  # the seeds are back for the next attempt


# --- The command line, configured through the environment -------------------------------------


def _enqueue_process(env: dict[str, str], ids: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "worker", "enqueue", *ids],
        env=worker_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_enqueue_command_in_every_mode(
    tls_redis: TlsRedis,
    sentinels: SentinelSetup,
    cluster: ClusterSetup,
    prefix: str,
    opened: list[RedisClient],
) -> None:
    ids = [f"{i:032x}" for i in range(3)]
    modes: dict[str, tuple[dict[str, str], Settings]] = {
        "tls": (
            {
                "ACKWORKER_REDIS_URL": tls_redis.url(),
                "ACKWORKER_REDIS_CA_FILE": str(tls_redis.tls.ca_cert),
            },
            tls_settings(tls_redis, prefix),
        ),
        "sentinel": (
            {
                "ACKWORKER_REDIS_URL": "redis://unused.invalid:1/0",
                "ACKWORKER_REDIS_SENTINELS": sentinels.addresses,
                "ACKWORKER_REDIS_SENTINEL_MASTER": MASTER_NAME,
            },
            sentinel_settings(sentinels, prefix),
        ),
        "cluster": (
            {"ACKWORKER_REDIS_URL": cluster.url_of(0), "ACKWORKER_REDIS_CLUSTER": "true"},
            make_settings(cluster.url_of(0), prefix, redis_cluster=True),
        ),
    }
    for mode, (env, settings) in modes.items():
        env["ACKWORKER_KEY_PREFIX"] = prefix
        result = await anyio.to_thread.run_sync(_enqueue_process, env, ids)
        assert result.returncode == 0, (mode, result.stderr)
        tasks = keys_for(settings).tasks
        assert f"enqueued 3 to {tasks}" in result.stdout, mode
        assert await connect(opened, settings).xlen(tasks) == 3, mode
        assert TlsRedis.PASSWORD not in result.stdout + result.stderr


# --- Settings that cannot work together ----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis_cluster": True, "redis_sentinels": "127.0.0.1:1"}, "both set"),
        ({"redis_ca_file": "/etc/ca.pem"}, "not a rediss:// URL"),
        ({"redis_url": "redis://127.0.0.1:1/2", "redis_cluster": True}, "database 0"),
        ({"redis_url": "unix:///run/redis.sock", "redis_sentinels": "127.0.0.1:1"}, "Sentinel"),
    ],
)
def test_settings_that_cannot_work_together(overrides: dict[str, Any], message: str) -> None:
    values = {"redis_url": "redis://127.0.0.1:1/0", **overrides}
    settings = make_settings(values.pop("redis_url"), "p", **values)
    with pytest.raises(ConfigError, match=message):
        open_redis(settings, max_connections=2)
