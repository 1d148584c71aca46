"""Every dead-letter reason the worker writes is one ``ackworker dead --reason`` accepts."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from tests.conftest import PYTHON, RedisServer, worker_env
from tests.harness import ScriptedApi, make_settings, running_worker, stream_fields, wait_for
from worker.commands.dead import check_reason
from worker.reasons import REASONS, DeadReason
from worker.store.keys import Keys

PACKAGE = Path(__file__).resolve().parent.parent / "worker"
# The layers that write dead letters; commands and observe only read them.
WRITERS = ("store", "pipeline")


def _literal(node: ast.AST | None) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "DeadReason":
            yield DeadReason[node.attr].value
    elif isinstance(node, ast.Attribute) and node.attr == "value":
        yield from _literal(node.value)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str":
        yield from _literal(node.args[0] if node.args else None)


def _call_reasons(node: ast.Call) -> Iterator[str]:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    if name == "entry_dead_letter" and len(node.args) > 1:
        yield from _literal(node.args[1])
    for kw in node.keywords:
        if kw.arg == "reason":
            yield from _literal(kw.value)


def _dict_reasons(node: ast.Dict) -> Iterator[str]:
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "reason":
            yield from _literal(value)


def _assigned_reasons(node: ast.Assign | ast.AnnAssign) -> Iterator[str]:
    targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
    names = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets]
    if any(n.endswith("reason") for n in names):
        yield from _literal(node.value)


def _returned_reasons(node: ast.FunctionDef) -> Iterator[str]:
    if node.name.endswith("_reason"):
        for inner in ast.walk(node):
            if isinstance(inner, ast.Return) and inner.value is not None:
                for value in ast.walk(inner.value):
                    yield from _literal(value)


def _reasons_in(tree: ast.AST) -> Iterator[str]:
    """Reason values spelled out where a dead letter gets its reason: the second argument
    of ``entry_dead_letter``, a ``"reason"`` dict value or keyword, a ``*reason`` variable or
    attribute, and what a ``*_reason`` function returns."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield from _call_reasons(node)
        elif isinstance(node, ast.Dict):
            yield from _dict_reasons(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            yield from _assigned_reasons(node)
        elif isinstance(node, ast.FunctionDef):
            yield from _returned_reasons(node)


def written_reasons() -> dict[str, set[str]]:
    """Reason -> the modules that write it."""
    found: dict[str, set[str]] = {}
    for layer in WRITERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for reason in _reasons_in(ast.parse(path.read_text(), str(path))):
                found.setdefault(reason, set()).add(path.name)
    return found


def test_the_scan_finds_the_writers() -> None:
    found = written_reasons()
    assert {"source.py"} <= found["invalid_id"]
    assert {"source.py"} <= found["unknown_account"]
    assert {"source.py"} <= found["redelivered_too_often"]
    assert {"processor.py"} <= found["rejected"]
    assert {"processor.py"} <= found["retries_exhausted"]
    assert {"reconciler.py"} <= found["unconfirmed"]


def test_every_reason_written_is_accepted_and_no_other() -> None:
    written = set(written_reasons())
    refused = sorted(written - set(REASONS))
    assert refused == [], f"reasons written but refused by ackworker dead --reason: {refused}"
    assert sorted(set(REASONS) - written) == [], "REASONS lists a reason nothing writes"
    for reason in REASONS:
        assert check_reason(reason) == reason


async def ackworker(redis_server: RedisServer, prefix: str, *args: str) -> tuple[int, str, str]:
    env = worker_env(ACKWORKER_REDIS_URL=redis_server.url, ACKWORKER_KEY_PREFIX=prefix)
    done = await anyio.run_process([PYTHON, "-m", "worker", *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.anyio
async def test_unknown_account_dead_letters_can_be_listed_and_replayed(
    redis_server: RedisServer, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    settings = make_settings(redis_server.url, prefix)
    async with running_worker(settings, redis, ScriptedApi()):
        await redis.xadd(keys.tasks, {"id": "n1", "account": "nowhere"})

        async def dead_lettered() -> bool:
            return bool(await redis.xlen(keys.dead))

        await wait_for(dead_lettered, what="the unknown account's entry dead-lettered")
    assert [f["reason"] for f in await stream_fields(redis, keys.dead)] == ["unknown_account"]

    code, out, err = await ackworker(
        redis_server, prefix, "dead", "list", "--reason", "unknown_account", "--json"
    )
    assert code == 0, err
    assert [e["id"] for e in json.loads(out)["entries"]] == ["n1"]
    code, out, err = await ackworker(
        redis_server, prefix, "dead", "replay", "--reason", "unknown_account"
    )
    assert code == 0, err
    assert "replayed 1 to" in out
    assert await redis.xlen(keys.dead) == 0
