"""Scenario 13, Redis reply loss: two workers reach Redis through a fault-injecting proxy
(``python -m worker.dev.faultproxy``, a child process) that loses, cuts and stalls a
fraction of the replies for the whole run.

A lost reply is the hard case: the command ran, the client saw a connection error, and
redis-py's retry or the worker's settle retry sends it again. Seeded numbers, a few numbers
the stand-in never had (recorded short after verification) and a few malformed entries
(dead-lettered ``invalid_id`` at the source) exercise every kind of outcome write; besides
the random faults, the replies to the first settle calls that write a dead letter or a
reconcile record are lost for certain (:data:`TARGETED`).

Checked: the invariant (nothing lost; re-submissions only from resends of short batches);
every seeded number confirmed at the stand-in and none dead-lettered; every malformed entry
dead-lettered exactly once; every stranger named in exactly one reconcile record and no
record written twice; nothing pending in the group and no lease left in
``<prefix>:inflight`` once drained; the workers exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.common import Rig, Timer, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import ProxyProc, Stage, WorkerProc, enqueue, numbers, worker_env
from chaos.report import Mode, Outcome, Scenario

SIZES = {"full": 4000, "reduced": 400}
STRANGERS = 10
"""Valid numbers the stand-in never had: each ends in a reconcile record."""
POISON = 10
FAULTS = {"drop_p": 0.03, "cut_p": 0.01, "stall_p": 0.05, "stall_ms": 50.0}
SEED = 13
BATCH = 5
"""Small batches: more settle calls, so more of them meet a fault."""
TARGETED = [
    {"action": action, "match": match}
    for match in ("invalid_id", "shortfall")
    for action in ("drop", "cut")
]
"""Besides the random faults: the replies to the first two settle calls that write a dead
letter (``invalid_id``) and the first two that write a reconcile record (``shortfall``) are
lost (one dropped, one cut), so every run tests the writes a repeat could double."""


def _push(rig: Rig, seeded: list[str], strangers: list[str]) -> None:
    rig.api.seed(seeded)
    entries: list[dict[str, str | bytes]] = [{"id": n} for n in seeded + strangers]
    entries += [{"id": f"bad id {i}"} for i in range(POISON)]
    with rig.client() as client:
        enqueue(client, rig.keys, entries)


def _books(rig: Rig) -> tuple[Counter[tuple[str, str]], list[tuple[str, list[str]]], int, int]:
    """Dead letters by (number, source entry), reconcile records (batch id, numbers named),
    entries pending in the group, leases left."""
    with rig.client() as client:
        dead_rows: Any = client.xrange(rig.keys.dead, count=100_000)
        record_rows: Any = client.xrange(rig.keys.reconcile, count=100_000)
        pending: Any = client.xpending(rig.keys.tasks, rig.keys.group)
        leases = int(client.hlen(rig.keys.inflight))
    dead = Counter((f[b"id"].decode(), f[b"source"].decode()) for _, f in dead_rows)
    records = [(f[b"batch_id"].decode(), json.loads(f[b"ids"])) for _, f in record_rows]
    return dead, records, int(pending["pending"]), leases


def _check_once(outcome: Outcome, rig: Rig, seeded: list[str], strangers: list[str]) -> None:
    dead, records, pending, leases = _books(rig)
    twice = [key for key, n in dead.items() if n > 1]
    outcome.expect(not twice, f"{len(twice)} dead letters written more than once: {twice[:3]}")
    invalid = sum(1 for number, _ in dead if number == "")
    outcome.expect(invalid == POISON, f"{invalid} of {POISON} malformed entries dead-lettered")
    dead_seeded = {number for number, _ in dead} & set(seeded)
    outcome.expect(not dead_seeded, f"{len(dead_seeded)} seeded numbers dead-lettered")
    repeated = [b for (b, _), n in Counter((b, tuple(i)) for b, i in records).items() if n > 1]
    outcome.expect(not repeated, f"reconcile records written twice: {repeated[:3]}")
    named = Counter(n for _, ids in records for n in ids)
    off = [n for n in strangers if named[n] != 1]
    outcome.expect(not off, f"{len(off)} strangers not named in exactly one record: {off[:3]}")
    outcome.expect(pending == 0, f"{pending} entries still pending in the group")
    outcome.expect(leases == 0, f"{leases} leases left in {rig.keys.inflight}")


def _resends(workers: list[WorkerProc]) -> int:
    """Numbers a batch may carry again after its first request (as in scenario 11)."""
    return sum(
        (int(str(e["attempts"])) - 1) * int(str(e["size"]))
        for w in workers
        for e in w.named("batch.settled")
    )


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count = SIZES[mode]
    outcome.injected = (
        f"{count} numbers (+{STRANGERS} the stand-in never had, +{POISON} malformed), 2"
        f" replicas reaching Redis through a proxy that loses {FAULTS['drop_p']:.0%} of replies"
        f" after the command ran, cuts {FAULTS['cut_p']:.0%} mid-reply and stalls"
        f" {FAULTS['stall_p']:.0%} by {FAULTS['stall_ms']:g} ms (seed {SEED}), and the replies"
        f" to the first 2 settle calls writing dead letters and the first 2 writing reconcile"
        f" records; batch {BATCH}"
    )
    outcome.checked = (
        "invariant; every seeded number confirmed, none dead-lettered; each malformed entry"
        " dead-lettered once; each stranger in exactly one reconcile record, none written"
        " twice; nothing pending, no lease left; workers exit 0"
    )
    with Stage(workdir) as stage:
        rig = start_rig(stage, "--latency-ms", "20")
        proxy = ProxyProc(rig.stage, f"127.0.0.1:{rig.redis.port}", seed=SEED)
        workers = [
            stage.worker(
                name,
                worker_env(
                    proxy.redis_url, rig.prefix, rig.api.url, name, ACKWORKER_BATCH_SIZE=str(BATCH)
                ),
            )
            for name in ("w1", "w2")
        ]
        proxy.control(faults=FAULTS, next=TARGETED)
        seeded = numbers(count, "redis-replies")
        strangers = numbers(STRANGERS, "redis-replies-strangers")
        elapsed = Timer()
        _push(rig, seeded, strangers)
        rig.wait_drained(60 if mode == "reduced" else 180, "backlog settled under reply loss")
        drain_s = elapsed()
        stats = proxy.control(faults={"drop_p": 0.0, "cut_p": 0.0, "stall_p": 0.0})
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, *workers)
        retries = sum(len(w.named("settle.retry")) for w in workers)
        ledger = rig.ledger(seeded + strangers)
        _check_once(outcome, rig, seeded, strangers)
        allowance = _resends(workers)
    expect_invariant(outcome, ledger, resubmit_allowance=allowance)
    unconfirmed = set(seeded) - ledger.confirmed
    outcome.expect(not unconfirmed, f"{len(unconfirmed)} seeded numbers not confirmed")
    outcome.expect(stats["dropped"] > 0, "the proxy lost no reply: nothing was tested")
    outcome.figure = (
        f"{stats['requests']} requests through the proxy: {stats['dropped']} replies lost,"
        f" {stats['cut']} cut, {stats['stalled']} stalled, {stats['connections']} connections;"
        f" settle.retry logged {retries} times; drained in {drain_s:.1f} s"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("13", "Redis reply loss (replies lost, cut and stalled by a proxy)", run)
