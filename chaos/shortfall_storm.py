"""Scenario 11, shortfall storm: the stand-in silently loses confirmations for a window.

With ``drop_rate`` each number of a request is, with that probability, answered as not
confirmed and left pending, as in a silent failure of the service. Every such batch comes
up short. Two workers with verified reconciliation on (the default) never re-send a short
batch blind: they ask ``PollTaskResult`` which numbers are still listed (the shortfalls of
many batches together) and send only those again, packed into full requests, until none is.
The results belong to tasks, and are enqueued with their ``task_no`` (as ``ackworker poll``
writes them); a few numbers the stand-in never had come along, which verification can only
report. Once drained, every stranger and a few confirmed numbers arrive again, late.

Checked: the stand-in ends with nothing pending (every number it could confirm was
confirmed), nothing is lost, every reconcile record is verified, no seeded number is
dead-lettered, each stranger is named in exactly one record and the recorded shortfalls add
up to exactly the strangers; no confirmed number is ever submitted again (no blind resend);
the late duplicates cost no request and write no record; the workers exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from pathlib import Path

from chaos.common import Rig, Timer, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.procs import Stage, WorkerProc, enqueue, hold_for, numbers
from chaos.report import Mode, Outcome, Scenario

SIZES = {"full": (10_000, 100), "reduced": (1_000, 50)}
"""(numbers, numbers per task)."""
WINDOW_S = {"full": 15.0, "reduced": 2.0}
DROP_RATE = 0.2
RATE_LIMIT = 60
BATCH = 20
STRANGERS = 12
"""Valid numbers the stand-in never had, enqueued under a task of their own."""


def _seed_task(rig: Rig, ids: list[str], task_no: str) -> None:
    body = json.dumps({"ids": ids, "task_no": task_no}).encode()
    request = urllib.request.Request(rig.api.url + "/_admin/seed", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _push(rig: Rig, count: int, per_task: int) -> tuple[list[str], list[str]]:
    """Seed ``count`` numbers in tasks of ``per_task`` and enqueue them with their task, then
    the strangers; returns both lists."""
    seeded = numbers(count, "shortfall-storm")
    entries: list[dict[str, str | bytes]] = []
    for start in range(0, count, per_task):
        task_no = f"T-{start // per_task:05d}"
        chunk = seeded[start : start + per_task]
        _seed_task(rig, chunk, task_no)
        entries += [{"id": n, "task_no": task_no} for n in chunk]
    strangers = numbers(STRANGERS, "shortfall-storm-strangers")
    entries += [{"id": n, "task_no": "T-strangers"} for n in strangers]
    with rig.client() as client:
        enqueue(client, rig.keys, entries)
    return seeded, strangers


def _records(rig: Rig) -> list[dict[str, str]]:
    """Every reconcile record (at most one per batch, so a few thousand at most)."""
    with rig.client() as client:
        rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(
            rig.keys.reconcile, count=100_000
        )
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


def _check_records(outcome: Outcome, records: list[dict[str, str]], strangers: set[str]) -> None:
    """Every record verified; each stranger named once; the shortfalls add up to them."""
    unverified = [r["batch_id"] for r in records if r.get("verified") != "true"]
    outcome.expect(not unverified, f"{len(unverified)} unverified records, e.g. {unverified[:3]}")
    named = Counter(n for r in records for n in json.loads(r["ids"]))
    outcome.expect(strangers <= set(named), f"{len(strangers - set(named))} strangers unnamed")
    twice = [n for n, times in named.items() if times > 1]
    outcome.expect(not twice, f"{len(twice)} numbers named in two records, e.g. {twice[:3]}")
    recorded = sum(int(r["shortfall"]) for r in records)
    outcome.expect(
        recorded == len(strangers),
        f"recorded shortfall {recorded}, numbers the stand-in never had {len(strangers)}",
    )
    # A stranger rides in a batch with others only when the batch closed across tasks; the
    # answers then cannot say which of its numbers were the strangers, so all are named.
    mixed = [r for r in records if set(json.loads(r["ids"])) - strangers]
    wrong = [r["batch_id"] for r in mixed if int(r.get("elsewhere") or 0) == 0]
    outcome.expect(
        not wrong, f"{len(wrong)} records name numbers the stand-in knows, e.g. {wrong[:3]}"
    )


def _late_duplicates(outcome: Outcome, rig: Rig, again: list[str]) -> None:
    """``again`` arrives a second time: no request, no record."""
    before = rig.api.stats()["requests_by_action"]
    records = len(_records(rig))
    with rig.client() as client:
        enqueue(client, rig.keys, [{"id": n, "task_no": "T-late"} for n in again])
    rig.wait_drained(60, "late duplicates")
    after = rig.api.stats()["requests_by_action"]
    outcome.expect(after == before, f"late duplicates cost requests: {before} -> {after}")
    outcome.expect(len(_records(rig)) == records, "late duplicates wrote reconcile records")


def _events(workers: list[WorkerProc], name: str) -> list[dict[str, object]]:
    return [e for w in workers for e in w.named(name)]


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count, per_task = SIZES[mode]
    window_s = WINDOW_S[mode]
    outcome.injected = (
        f"drop rate {DROP_RATE:.0%} of confirmations for {window_s:g} s over {count} numbers in"
        f" tasks of {per_task} (+{STRANGERS} the stand-in never had); 2 replicas, verification"
        f" on, rate limit {RATE_LIMIT}/s, batch {BATCH}"
    )
    outcome.checked = (
        "stand-in pending 0 (nothing it could confirm left unconfirmed); invariant; every"
        " reconcile record verified; each stranger named in exactly one record and the recorded"
        " shortfall equal to the strangers; no seeded number dead-lettered; nothing confirmed"
        " submitted again; late duplicates cost no request and no record"
    )
    with Stage(workdir) as stage:
        rig = start_rig(stage)
        env = {"ACKWORKER_RATE_LIMIT": str(RATE_LIMIT), "ACKWORKER_BATCH_SIZE": str(BATCH)}
        workers = [rig.worker("w1", **env), rig.worker("w2", **env)]
        rig.api.faults(drop_rate=DROP_RATE)
        seeded, strangers = _push(rig, count, per_task)
        elapsed = Timer()
        hold_for(window_s, 0.5, lambda: None)
        left_in_window = rig.backlog()
        rig.api.faults(drop_rate=0.0)
        rig.wait_drained(180, "backlog after the shortfall storm")
        drain_s = elapsed()
        stats = rig.api.stats()
        _late_duplicates(outcome, rig, strangers + seeded[:STRANGERS])
        stop_cleanly(outcome, *workers)
        no_tracebacks(outcome, *workers)
        records = _records(rig)
        _check_records(outcome, records, set(strangers))
        ledger = rig.ledger(seeded + strangers)
        checks = _events(workers, "reconcile.verified")
        failed_checks = _events(workers, "reconcile.verify_failed")
    pending = int(stats["pending"])
    dropped = int(stats["dropped_confirmations"])
    polls = int(stats["requests_by_action"].get("PollTaskResult", 0))
    acks = int(stats["requests_by_action"].get("AcknowledgeTaskResult", 0))
    outcome.expect(dropped > 0, "the stand-in dropped no confirmation: nothing was tested")
    outcome.expect(pending == 0, f"{pending} numbers left pending at the stand-in")
    outcome.expect(not failed_checks, f"{len(failed_checks)} checks learnt nothing")
    dead_seeded = [n for n in seeded if n in ledger.dead]
    outcome.expect(not dead_seeded, f"{len(dead_seeded)} seeded numbers dead-lettered")
    expect_invariant(outcome, ledger)  # no blind resend: nothing confirmed is sent again
    resent = sum(int(str(e["listed"])) for e in checks)
    minimum = -(-(count + STRANGERS) // BATCH)
    outcome.figure = (
        f"{dropped} confirmations dropped; {len(records)} short batches; {resent} numbers"
        f" found still listed and re-sent, packed; {acks} acknowledge + {polls} poll requests"
        f" ({(acks + polls) / minimum:.2f}× the clean minimum of {minimum}); stand-in pending"
        f" {pending}, drained in {drain_s:.1f} s"
    )
    outcome.note(f"backlog when the drops stopped: {left_in_window} entries")
    outcome.note(ledger.summary())


SCENARIO = Scenario("11", "Shortfall storm (confirmations silently dropped, verified)", run)
