"""``ackworker status``, ``dead list|replay|purge`` and ``reconcile list`` as operators run them:
real processes against a prefix whose content is known."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import PYTHON, RedisServer, worker_env
from tests.harness import ScriptedApi, drained, make_settings, running_worker, wait_for
from worker.api.client import AckResult
from worker.commands import common as ops
from worker.commands.status import collect_status, render_status
from worker.entries import DEFAULT_ACCOUNT
from worker.errors import PermanentApiError
from worker.observe.cost import fleet_requests
from worker.store.enqueue import enqueue
from worker.store.heartbeat import Heartbeat
from worker.store.keys import Keys
from worker.store.limiter import RateLimiter
from worker.store.outage import OutageRule

pytestmark = pytest.mark.anyio

AT = "2026-01-01T00:00:00Z"


async def ackworker(
    redis_server: RedisServer, prefix: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [PYTHON, "-m", "worker", *args],
        env=worker_env(
            ACKWORKER_REDIS_URL=redis_server.url,
            ACKWORKER_KEY_PREFIX=prefix,
            ACKWORKER_RATE_LIMIT="100",
            EU_ID="LTAIeuexample0001",
            EU_SECRET="eu-secret-value",
            **(env or {}),
        ),
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def dead_letter(number: str, reason: str, n: int, account: str = "default") -> dict[str, str]:
    return {
        "id": number,
        "reason": reason,
        "error": f"E{n}",
        "attempts": "3",
        "account": account,
        "at": AT,
    }


def reconcile_record(
    batch: str, kind: str, ids: list[str], short: int, over: int
) -> dict[str, str]:
    return {
        "batch_id": batch,
        "kind": kind,
        "submitted": str(len(ids)),
        "confirmed": str(len(ids) - short + over),
        "shortfall": str(short),
        "overcount": str(over),
        "ids": json.dumps(ids),
        "request_ids": json.dumps([f"req-{batch}"]),
        "at": AT,
    }


async def populate(redis: Redis, keys: Keys) -> list[bytes]:
    """3 in the backlog (2 held by a stalled consumer), 6 dead letters, 3 reconcile records,
    a throttled limiter and one live worker that has stopped sending."""
    await enqueue(redis, keys, ["n1", "n2", "n3"])
    held = await redis.xreadgroup(keys.group, "c-stalled", {keys.tasks: ">"}, count=2)
    letters = [
        {"id": "", "reason": "invalid_id", "error": "field 'id' is missing", "raw": "{}"},
        dead_letter("r1", "rejected", 1),
        {"id": "", "reason": "invalid_id", "error": "field 'id' is empty", "raw": '{"id":""}'},
        dead_letter("r2", "rejected", 2),
        dead_letter("x1", "retries_exhausted", 3),
        dead_letter("r3", "rejected", 4, account="eu"),
    ]
    for fields in letters:
        await redis.xadd(keys.dead, fields)  # type: ignore[arg-type]
    for record in (
        reconcile_record("b1", "shortfall", ["a1", "a2", "a3", "a4"], 3, 0),
        reconcile_record("b2", "overcount", ["a5"], 0, 1),
        reconcile_record("b3", "shortfall", ["a6", "a7"], 2, 0),
    ):
        await redis.xadd(keys.reconcile, record)  # type: ignore[arg-type]
    await RateLimiter(redis, keys.limiter, 100.0).throttled(60.0)
    paused: dict[str, str | int] = {
        "state": "running",
        "paused": "InvalidAccessKeyId.NotFound",
        "confirmed": 7,
        "acknowledge_requests": 9,
        "poll_requests": 2,
    }
    await Heartbeat(redis, keys, "w-paused", lambda: paused).beat()
    return [entry_id for entry_id, _ in held[0][1]]


async def test_status_json_and_table(redis_server: RedisServer, redis: Redis, prefix: str) -> None:
    held = await populate(redis, Keys(prefix))
    code, out, err = await ackworker(redis_server, prefix, "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert list(status) == [
        "key_prefix",
        "backlog",
        "pending",
        "consumers",
        "dead",
        "reconcile",
        "rate_limit",
        "accounts",
        "sending_paused",
        "requests",
        "workers",
    ]
    assert status["backlog"] == 3
    assert status["pending"]["count"] == 2
    assert status["pending"]["oldest_id"] == held[0].decode()
    assert status["pending"]["oldest_idle_ms"] >= 0
    assert [(c["name"], c["pending"]) for c in status["consumers"]] == [("c-stalled", 2)]
    assert status["dead"] == {
        "total": 6,
        "by_reason": {"invalid_id": 2, "rejected": 3, "retries_exhausted": 1},
        "by_account": {"": 2, "default": 3, "eu": 1},
        "scanned": 6,
        "capped": False,
    }
    assert status["reconcile"] == {
        "total": 3,
        "by_kind": {"overcount": 1, "shortfall": 2},
        "shortfall": 5,
        "overcount": 1,
        "scanned": 3,
        "capped": False,
    }
    rate = status["rate_limit"]
    assert (rate["limit_rps"], rate["effective_rps"]) == (100.0, 70.0)  # cut ×0.7 once
    assert 50 < rate["pause_s"] <= 60
    assert 0 <= rate["throttled_s_ago"] < 10
    assert status["accounts"] == {"default": rate}  # no named accounts configured
    assert status["sending_paused"] == [
        {"consumer": "w-paused", "problem": "InvalidAccessKeyId.NotFound"}
    ]
    assert status["requests"] == {
        "by_action": {"acknowledge": 9, "poll": 2},
        "total": 11,
        "confirmed": 7,
        "per_confirmed": 1.571,  # 11 / 7
    }
    [worker] = status["workers"]
    assert (worker["consumer"], worker["confirmed"], worker["state"]) == ("w-paused", 7, "running")
    assert worker["requests_by_action"] == {"acknowledge": 9, "poll": 2}

    code, out, err = await ackworker(redis_server, prefix, "status")
    assert code == 0, err
    assert f"backlog       3 entries in {prefix}:tasks" in out
    assert "dead letters  6: invalid_id 2, rejected 3, retries_exhausted 1" in out
    assert "reconcile     3 record(s), shortfall 5, overcount 1" in out
    assert "paused on w-paused (InvalidAccessKeyId.NotFound)" in out
    assert (
        "requests      11 (acknowledge 9, poll 2) by the live workers since start; "
        "1.571 per confirmed number"
    ) in out
    assert "ack reqs  poll reqs" in out
    assert "c-stalled" in out


async def test_status_shows_each_accounts_limiter(
    redis_server: RedisServer, redis: Redis, prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "accounts.toml"
    config.write_text(
        '[accounts.eu]\nrate_limit = 5.0\naccess_key_id_env = "EU_ID"\n'
        'access_key_secret_env = "EU_SECRET"\n'
    )
    keys = Keys(prefix)
    await RateLimiter(redis, keys.limiter_for("eu"), 5.0).throttled(30.0)
    await redis.xadd(keys.account_stream("eu"), {"id": "e1", "account": "eu"})
    await redis.xadd(keys.account_stream("eu"), {"id": "e2", "account": "eu"})
    code, out, err = await ackworker(
        redis_server, prefix, "status", "--json", env={"ACKWORKER_CONFIG": str(config)}
    )
    assert code == 0, err
    accounts = json.loads(out)["accounts"]
    assert list(accounts) == ["default", "eu"]
    assert (accounts["default"]["backlog"], accounts["eu"]["backlog"]) == (0, 2)
    assert (accounts["default"]["pending"], accounts["eu"]["pending"]) == (0, 0)
    assert accounts["default"]["pause_s"] == 0
    assert accounts["default"]["throttled_s_ago"] is None
    assert (accounts["eu"]["limit_rps"], accounts["eu"]["effective_rps"]) == (5.0, 3.5)
    assert 20 < accounts["eu"]["pause_s"] <= 30

    code, out, err = await ackworker(
        redis_server, prefix, "status", env={"ACKWORKER_CONFIG": str(config)}
    )
    assert code == 0, err
    assert "rate default  backlog 0 (0 pending), limit 100.0/s, effective 100.0/s" in out
    assert "rate eu       backlog 2 (0 pending), limit 5.0/s, effective 3.5/s" in out


async def test_status_sums_the_fleets_requests_and_says_when_nothing_was_confirmed(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    status = await collect_status(redis, keys, {DEFAULT_ACCOUNT: 10.0})
    assert status["requests"] == {
        "by_action": {"acknowledge": 0, "poll": 0},
        "total": 0,
        "confirmed": 0,
        "per_confirmed": None,
    }
    # Two live workers, none has confirmed anything yet; one of an older version beats
    # without request counts.
    spent: dict[str, str | int] = {"confirmed": 0, "acknowledge_requests": 4, "poll_requests": 3}
    await Heartbeat(redis, keys, "w-spent", lambda: spent).beat()
    await Heartbeat(redis, keys, "w-older", lambda: {"confirmed": 0}).beat()
    status = await collect_status(redis, keys, {DEFAULT_ACCOUNT: 10.0})
    assert status["requests"] == {
        "by_action": {"acknowledge": 4, "poll": 3},
        "total": 7,
        "confirmed": 0,
        "per_confirmed": None,
    }
    assert [w["requests_by_action"] for w in status["workers"]] == [
        {"acknowledge": 0, "poll": 0},
        {"acknowledge": 4, "poll": 3},
    ]
    line = "requests      7 (acknowledge 4, poll 3) by the live workers since start; none "
    assert line + "confirmed yet" in render_status(status)


def test_requests_per_confirmed_number_keeps_four_significant_digits() -> None:
    # At batch_size 1000 a fleet near its best sends 0.001 requests per number: rounding to
    # a fixed number of decimals would hide a 20% overhead.
    workers = [
        {"confirmed": 60_000, "requests_by_action": {"acknowledge": 70, "poll": 2}},
        {"confirmed": 40_000, "requests_by_action": {"acknowledge": 48}},
    ]
    assert fleet_requests(workers) == {
        "by_action": {"acknowledge": 118, "poll": 2},
        "total": 120,
        "confirmed": 100_000,
        "per_confirmed": 0.0012,
    }


async def test_status_says_when_a_count_was_capped(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix)
    for n in range(7):
        await redis.xadd(keys.dead, dead_letter(f"d{n}", "rejected", n))  # type: ignore[arg-type]
    monkeypatch.setattr(ops, "PAGE", 2)
    monkeypatch.setattr(ops, "SCAN_CAP", 5)
    status = await collect_status(redis, keys, {DEFAULT_ACCOUNT: 10.0})
    assert status["dead"] == {
        "total": 7,
        "by_reason": {"rejected": 5},
        "by_account": {"default": 5},
        "scanned": 5,
        "capped": True,
    }


async def test_dead_list_filters_and_limits(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    await populate(redis, Keys(prefix))
    code, out, err = await ackworker(
        redis_server, prefix, "dead", "list", "--reason", "rejected", "--json"
    )
    assert code == 0, err
    listed = json.loads(out)
    assert [(e["id"], e["reason"], e["attempts"]) for e in listed["entries"]] == [
        ("r1", "rejected", 3),
        ("r2", "rejected", 3),
        ("r3", "rejected", 3),
    ]
    assert listed["more"] is False

    code, out, _ = await ackworker(redis_server, prefix, "dead", "list", "--limit", "2", "--json")
    listed = json.loads(out)
    assert [e["reason"] for e in listed["entries"]] == ["invalid_id", "rejected"]
    assert listed["more"] is True

    code, out, _ = await ackworker(redis_server, prefix, "dead", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["entry", "at", "reason", "id", "attempts", "error"]
    assert len(lines) == 1 + 6


async def test_reconcile_list(redis_server: RedisServer, redis: Redis, prefix: str) -> None:
    await populate(redis, Keys(prefix))
    code, out, err = await ackworker(redis_server, prefix, "reconcile", "list", "--json")
    assert code == 0, err
    records = json.loads(out)["records"]
    assert [(r["batch_id"], r["kind"], r["shortfall"]) for r in records] == [
        ("b1", "shortfall", 3),
        ("b2", "overcount", 0),
        ("b3", "shortfall", 2),
    ]
    assert records[0]["ids"] == ["a1", "a2", "a3", "a4"]
    assert records[0]["request_ids"] == ["req-b1"]

    code, out, _ = await ackworker(redis_server, prefix, "reconcile", "list", "--limit", "1")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["entry", "at", "kind", "batch_id"]
    assert "b1" in lines[1]
    assert lines[2].startswith("(the oldest 1 shown")


async def test_purge_refuses_without_yes_and_trims_with_it(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    seconds, _ = await redis.time()
    three_days_ago_ms = (int(seconds) - 3 * 86400) * 1000
    for n in range(2):  # explicit ids: stream ids carry the millisecond they were added
        old = dead_letter(f"old{n}", "rejected", n)
        await redis.xadd(keys.dead, old, id=f"{three_days_ago_ms}-{n}")  # type: ignore[arg-type]
    await redis.xadd(keys.dead, dead_letter("new", "rejected", 9))  # type: ignore[arg-type]

    code, out, _ = await ackworker(redis_server, prefix, "dead", "purge", "--older-than", "1d")
    assert code == 2
    assert "would purge 2 dead letter(s)" in out
    assert await redis.xlen(keys.dead) == 3

    code, out, err = await ackworker(
        redis_server, prefix, "dead", "purge", "--older-than", "1d", "--yes"
    )
    assert code == 0, err
    assert "purged 2 dead letter(s)" in out
    assert [json.loads(line)["count"] for line in out.splitlines() if "dead.purged" in line] == [2]
    rows = await redis.xrange(keys.dead)
    assert [f[b"id"] for _, f in rows] == [b"new"]


async def test_replay_moves_exactly_the_matching_entries_and_they_get_confirmed(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    numbers = [f"{i:032x}" for i in range(1, 21)]
    bad = {numbers[3], numbers[11]}
    await enqueue(redis, keys, numbers, task_no="T1")
    await redis.xadd(keys.tasks, {"id": ""})
    await redis.xadd(keys.tasks, {"id": "not a number"})
    confirmed: Counter[str] = Counter()

    def answer(ids: Sequence[str], n: int, refuse: set[str]) -> AckResult:
        if refuse & set(ids):
            raise PermanentApiError("InvalidParameter", "refused", request_id=f"req-{n}")
        fresh = [i for i in dict.fromkeys(ids) if i not in confirmed]
        confirmed.update(fresh)
        return AckResult(len(fresh), f"req-{n}")

    settings = make_settings(redis_server.url, prefix)
    async with running_worker(settings, redis, ScriptedApi(lambda i, n: answer(i, n, bad))):
        await wait_for(lambda: drained(redis, prefix), what="first pass settled")
    dead_before = await redis.xrange(keys.dead)
    reasons = Counter(f[b"reason"].decode() for _, f in dead_before)
    assert reasons == {"rejected": 2, "invalid_id": 2}

    code, out, err = await ackworker(
        redis_server, prefix, "dead", "replay", "--reason", "rejected", "--dry-run"
    )
    assert code == 0, err
    assert out.startswith(f"would replay 2 to {prefix}:tasks")
    assert await redis.xrange(keys.dead) == dead_before
    assert await redis.xlen(keys.tasks) == 0

    first, second = sorted(bad, key=numbers.index)
    code, out, err = await ackworker(
        redis_server, prefix, "dead", "replay", "--id", first, "--id", "zzz"
    )
    assert code == 0, err
    event, summary = out.splitlines()[:2]
    assert json.loads(event)["event"] == "dead.replayed"
    assert summary.startswith("replayed 1 ")
    assert "no matching dead letter for: zzz" in out

    code, out, err = await ackworker(redis_server, prefix, "dead", "replay")
    assert code == 0, err
    assert "replayed 1 " in out
    assert "skipped 2 without a valid id" in out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["event"], e["id"], e["reason"]) for e in events] == [
        ("dead.replayed", second, "rejected")
    ]
    tasks = await redis.xrange(keys.tasks)
    assert sorted((f[b"id"].decode(), f[b"task_no"]) for _, f in tasks) == sorted(
        (n, b"T1") for n in bad
    )

    async with running_worker(settings, redis, ScriptedApi(lambda i, n: answer(i, n, set()))):
        await wait_for(lambda: drained(redis, prefix), what="replayed entries settled")
    assert confirmed == Counter(numbers)  # every number confirmed, none twice
    remaining = Counter(f[b"reason"].decode() for _, f in await redis.xrange(keys.dead))
    assert remaining == {"invalid_id": 2}


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["dead", "list", "--reason", "nope"], "'nope'"),
        (["dead", "replay", "--reason", "Rejected"], "'Rejected'"),
        (["dead", "replay", "--id", "bad id;rm"], "'bad id;rm'"),
        (["dead", "purge", "--older-than", "7days", "--yes"], "'7days'"),
        (["dead", "purge", "--older-than", "0d", "--yes"], "'0d'"),
        (["dead", "list", "--limit", "ten"], "'ten'"),
        (["reconcile", "list", "--limit", "0"], "'0'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    redis_server: RedisServer, prefix: str, args: list[str], shown: str
) -> None:
    env = worker_env(ACKWORKER_REDIS_URL=redis_server.url, ACKWORKER_KEY_PREFIX=prefix)
    done = subprocess.run(
        [PYTHON, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert shown in done.stderr
    assert "Traceback" not in done.stderr


async def test_status_shows_an_outage_pause(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    limiter = RateLimiter(redis, keys.limiter, 10.0, outage=OutageRule(after_s=0.05))

    async def down() -> bool:
        return (await limiter.call("unreachable")).state in ("started", "down")

    await wait_for(down, what="the account paused")
    code, out, err = await ackworker(redis_server, prefix, "status", "--json")
    assert code == 0, err
    outage = json.loads(out)["rate_limit"]["outage"]
    assert outage["probes"] == 0
    assert 0 <= outage["since_s_ago"] < 10
    assert 0 < outage["next_probe_in_s"] <= 5
    code, out, err = await ackworker(redis_server, prefix, "status")
    assert "sending paused fleet-wide, 0 probe(s) so far" in out
