"""Scenario ``dirty``: input as a poller enqueues it, and the quota it costs to confirm.

The stand-in holds ``--dirty-tasks`` tasks (default 100) of ``--dirty-task-size`` numbers
(default 100), each task with its own ``task_no`` and ``domain``. The stream gets every
number in task order with those fields, as ``ackworker poll`` writes them, plus numbers the
API does not list (confirmed elsewhere, or never existed) at random places, each carrying
the fields of the task it sits in. Once that main body has drained, a few late duplicates
arrive (1% of its numbers, half confirmed ones, half unknown ones) and drain too.

Two variants per run, 2% and 20% unknown numbers (as a share of the seeded ones), each on a
fresh Redis and stand-in; the stand-in and the worker are set as for ``api-bound`` (quota
and rate limit 20 requests/s, 50 ms latency, batch 100), so requests are what is scarce.
Measured against the clean minimum, ⌈distinct numbers of the main body ÷ 100⌉, the requests
a worker that never asked twice would need; and the shortfall the worker recorded in
``bench:reconcile`` against the numbers that really are missing.
"""

from __future__ import annotations

import json
import math
import random
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench.contestants import (
    WorkerConfig,
    ackworker_args,
    admin_stats,
    backlog,
    drain_backlog,
    summarize,
)
from bench.data import KEYS, fill_entries, make_ids, write_seed_file
from bench.procs import BenchError, Stack, poll_until, stack
from bench.scenario import Numbers, Options, Row

NAME = "dirty"
QUOTA_RPS = 20
LATENCY_MS = 50
WORKER = WorkerConfig(rate_limit=QUOTA_RPS, batch_size=100, concurrency=4)
LATE_SHARE = 0.01
"""Late duplicates as a share of the main body's distinct numbers, half of them unknown."""
SEED = 11
"""Seeds the numbers, the task fields and where the unknown numbers go: runs repeat."""

Entry = dict[str, str]
"""One stream entry's fields: ``id``, ``task_no``, ``domain``."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One input mix: its key in the JSON, its label in the table, its share of unknowns."""

    key: str
    label: str
    unknown_share: float
    target: str


VARIANTS = (
    Variant("unknown_2pct", "2% unknown", 0.02, "≤ 1.15"),
    Variant("unknown_20pct", "20% unknown", 0.20, "≤ 1.5"),
)


def _rows(v: Variant) -> tuple[Row, ...]:
    k, at = v.key, v.label
    return (
        Row(f"{at}: AcknowledgeTaskResult requests", (k, "acknowledge_requests")),
        Row(f"{at}: PollTaskResult requests", (k, "poll_requests")),
        Row(f"{at}: requests at the stand-in", (k, "requests")),
        Row(f"{at}: clean minimum, ⌈numbers ÷ 100⌉", (k, "clean_minimum")),
        Row(f"{at}: requests ÷ clean minimum", (k, "requests_over_minimum"), v.target, 2),
        Row(f"{at}: shortfall recorded", (k, "shortfall_recorded")),
        Row(f"{at}: numbers missing (unknown)", (k, "missing")),
        Row(f"{at}: shortfall recorded minus missing", (k, "shortfall_excess"), "0"),
        Row(f"{at}: confirmed numbers sent again", (k, "reconfirm_attempts")),
    )


ROWS = tuple(row for variant in VARIANTS for row in _rows(variant))


@dataclass(frozen=True, slots=True)
class Task:
    """A finished task at the stand-in: its own ``task_no`` and ``domain``, its numbers."""

    task_no: str
    domain: str
    ids: list[str]


@dataclass(frozen=True, slots=True)
class Workload:
    """What one variant seeds and enqueues."""

    tasks: list[Task]
    body: list[Entry]
    """The main body, in stream order: every seeded number once, the unknown interleaved."""
    unknown: list[str]
    late: list[Entry]
    """Enqueued once the main body has drained: confirmed and unknown numbers again."""


def workload(tasks: int, task_size: int, unknown_share: float) -> Workload:
    """The tasks, the main body and the late duplicates, the same for the same arguments."""
    # Not SEED itself: make_ids draws from Random(SEED), and a task_no should not be an id.
    rng = random.Random(SEED + 1)
    seeded = tasks * task_size
    unknown_count = max(1, round(seeded * unknown_share)) if unknown_share > 0 else 0
    # One sequence for both: the seeded numbers are the same whatever the share.
    ids = make_ids(seeded + unknown_count, seed=SEED)
    made = [
        Task(f"{rng.getrandbits(128):032x}", f"dirty-{i:04d}.example.com", ids[at : at + task_size])
        for i, at in enumerate(range(0, seeded, task_size))
    ]
    unknown = ids[seeded:]
    body = _interleave(made, unknown, rng)
    return Workload(made, body, unknown, _late(body, set(unknown), rng))


def _interleave(tasks: list[Task], unknown: list[str], rng: random.Random) -> list[Entry]:
    """Every seeded number in task order, each unknown right after a random one of them,
    with that one's task fields (a poller lists what the API lists, task by task)."""
    seeded = [{"id": n, "task_no": t.task_no, "domain": t.domain} for t in tasks for n in t.ids]
    after: dict[int, list[str]] = {}
    for number in unknown:
        after.setdefault(rng.randrange(len(seeded)), []).append(number)
    body: list[Entry] = []
    for index, entry in enumerate(seeded):
        body.append(entry)
        body += [{**entry, "id": number} for number in after.get(index, ())]
    return body


def _late(body: list[Entry], unknown: set[str], rng: random.Random) -> list[Entry]:
    """``LATE_SHARE`` of the body again, half confirmed numbers and half unknown ones."""
    half = max(1, round(len(body) * LATE_SHARE / 2))
    known = [e for e in body if e["id"] not in unknown]
    strays = [e for e in body if e["id"] in unknown]
    late = rng.sample(known, min(half, len(known))) + rng.sample(strays, min(half, len(strays)))
    rng.shuffle(late)
    return late


def seed_tasks(api_url: str, tasks: list[Task]) -> None:
    """``POST /_admin/seed`` each task's numbers with its ``task_no`` and ``domain``."""
    for task in tasks:
        body = {"ids": task.ids, "task_no": task.task_no, "domain": task.domain}
        request = urllib.request.Request(
            f"{api_url}/_admin/seed",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            added = int(json.load(reply)["added"])
        if added != len(task.ids):
            raise BenchError(f"the stand-in took {added} of task {task.task_no}'s numbers")


def late_arrivals(s: Stack, late: list[Entry], timeout_s: float, alive: Callable[[], None]) -> None:
    """Enqueue the late duplicates and wait until they are settled too."""
    fill_entries(s.redis, late)

    def drained() -> bool | None:
        alive()  # a worker that died would otherwise be waited for until the deadline
        return True if backlog(s) == 0 else None

    poll_until(drained, timeout_s=timeout_s, what=f"{len(late)} late duplicates to settle")


def recorded_shortfall(client: redis.Redis) -> tuple[int, int]:
    """The ``shortfall`` fields of ``bench:reconcile`` summed, and how many records."""
    records: list[tuple[bytes, dict[bytes, bytes]]]
    records = client.xrange(KEYS.reconcile)  # type: ignore[assignment]
    return sum(int(fields.get(b"shortfall", b"0")) for _, fields in records), len(records)


def run_variant(opts: Options, workdir: Path, variant: Variant) -> Numbers:
    """One variant on a fresh Redis and stand-in: seed, enqueue, drain, late, drain."""
    load = workload(opts.dirty_tasks, opts.dirty_task_size, variant.unknown_share)
    # The seed file stays empty: tasks are seeded over HTTP, each with its own fields.
    seed_file = write_seed_file(workdir / "seed.txt", [])
    flags = ("--latency-ms", str(LATENCY_MS), "--quota-rps", str(QUOTA_RPS))
    minimum = math.ceil(len({e["id"] for e in load.body}) / WORKER.batch_size)
    # Twenty times the clean minimum's time at the quota, and a minute.
    timeout_s = 60 + 20 * minimum / QUOTA_RPS
    with stack(workdir / "ackworker", seed_file, flags) as s:
        seed_tasks(s.api_url, load.tasks)
        fill_entries(s.redis, load.body)
        late = partial(late_arrivals, s, load.late, timeout_s)
        drain, watch = drain_backlog(
            s, "ackworker", ackworker_args(), WORKER.env(s), timeout_s=timeout_s, after_drain=late
        )
        api = admin_stats(s.api_url)
        shortfall, records = recorded_shortfall(s.redis)
        dead = int(s.redis.xlen(KEYS.dead))  # type: ignore[arg-type]
        numbers = _numbers(load, api, minimum, shortfall)
        _check_confirmed(numbers, s.procs.log("ackworker"))
    numbers.update(reconcile_records=records, dead_letters=dead)
    numbers["ackworker"] = summarize(drain, watch, api)
    return numbers


def _numbers(load: Workload, api: dict[str, Any], minimum: int, shortfall: int) -> Numbers:
    by_action: dict[str, int] = api.get("requests_by_action") or {}
    requests = int(api.get("requests_total") or 0)
    return {
        "seeded": sum(len(t.ids) for t in load.tasks),
        "body_entries": len(load.body),
        "late_duplicates": len(load.late),
        "acknowledge_requests": int(by_action.get("AcknowledgeTaskResult", 0)),
        "poll_requests": int(by_action.get("PollTaskResult", 0)),
        "requests": requests,
        "clean_minimum": minimum,
        "requests_over_minimum": requests / minimum,
        "shortfall_recorded": shortfall,
        "missing": len(load.unknown),
        "shortfall_excess": shortfall - len(load.unknown),
        "reconfirm_attempts": int(api.get("reconfirm_attempts") or 0),
        "confirmed_more_than_once": int(api.get("confirmed_more_than_once") or 0),
        "confirmed": int(api.get("confirmed") or 0),
        "pending": int(api.get("pending") or 0),
    }


def _check_confirmed(numbers: Numbers, log: Path | None) -> None:
    """Fail the run unless the stand-in confirmed every seeded number."""
    if numbers["confirmed"] != numbers["seeded"] or numbers["pending"]:
        raise BenchError(
            f"the stand-in confirmed {numbers['confirmed']} of {numbers['seeded']} seeded"
            f" numbers ({numbers['pending']} pending); see {log}"
        )


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run: both variants, each on its own Redis and stand-in."""
    result: Numbers = {
        variant.key: run_variant(opts, workdir / variant.key, variant) for variant in VARIANTS
    }
    result["settings"] = {
        "worker": WORKER.as_dict(),
        "latency_ms": LATENCY_MS,
        "quota_rps": QUOTA_RPS,
        "tasks": opts.dirty_tasks,
        "task_size": opts.dirty_task_size,
        "late_share": LATE_SHARE,
    }
    return result
