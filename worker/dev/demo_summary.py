"""What the demo saw and its verdict: read from the stand-in's admin stats, the worker's
``worker.stopped`` log line and the ``demo:dead`` and ``demo:reconcile`` streams, checked
against the demo's promises and printed. :func:`conclude` prints the closed loop's too."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from worker.dev.demo_setup import DEAD, RECONCILE
from worker.dev.demo_workload import MALFORMED, Workload, stream
from worker.dev.sandbox import Child, MockApiProcess


@dataclass(slots=True)
class Summary:
    """What the demo saw; also written as JSON with ``--json-out``."""

    enqueued: dict[str, int]
    stand_in: dict[str, Any]
    worker: dict[str, Any]
    events: dict[str, int]
    dead_by_reason: dict[str, int]
    reconcile_records: int
    shortfall: int
    shortfall_ids: list[str]
    drain_s: float
    elapsed_s: float
    worker_log: str
    problems: list[str]


def _text(value: bytes | None) -> str:
    return (value or b"").decode(errors="replace")


def summarize(
    client: redis.Redis, api: MockApiProcess, work: Workload, worker: Child, drain_s: float
) -> Summary:
    """Collect the outcome from the stand-in, the worker's log and the Redis streams."""
    events = worker.events()
    stopped = [e for e in events if e["event"] == "worker.stopped"]
    dead = Counter(_text(f.get(b"reason")) for f in stream(client, DEAD))
    records = stream(client, RECONCILE)
    ids = sorted({i for f in records for i in json.loads(_text(f.get(b"ids")) or "[]")})
    return Summary(
        enqueued={
            "seeded": len(work.seeded),
            "duplicates": len(work.duplicates),
            "unknown": len(work.unknown),
            "malformed": len(MALFORMED),
        },
        stand_in=api.stats(),
        worker=stopped[-1] if stopped else {},
        events=dict(Counter(e["event"] for e in events)),
        dead_by_reason=dict(dead),
        reconcile_records=len(records),
        shortfall=sum(int(_text(f.get(b"shortfall")) or 0) for f in records),
        shortfall_ids=ids,
        drain_s=drain_s,
        elapsed_s=0.0,
        worker_log=str(worker.log),
        problems=[],
    )


def problems(s: Summary, work: Workload) -> list[str]:
    """The demo's promises that did not hold (empty when all did)."""
    found: list[str] = []
    if s.stand_in.get("confirmed") != len(work.seeded):
        found.append(f"stand-in confirmed {s.stand_in.get('confirmed')} of {len(work.seeded)}")
    if s.worker.get("confirmed") != len(work.seeded):
        found.append(f"worker reports {s.worker.get('confirmed')} confirmed")
    if s.dead_by_reason.get("invalid_id") != len(MALFORMED):
        found.append(f"dead-lettered invalid_id: {s.dead_by_reason.get('invalid_id', 0)}")
    missing = set(work.unknown) - set(s.shortfall_ids)
    if missing:
        found.append(f"{len(missing)} unknown numbers are not in {RECONCILE}")
    entries = len(work.stream_order())
    dead = sum(n for reason, n in s.dead_by_reason.items() if reason != "invalid_id")
    outcomes = [s.worker.get(k) or 0 for k in ("confirmed", "duplicates", "shortfall")]
    if sum(outcomes) + dead != entries:
        found.append(f"{entries} valid entries but {sum(outcomes) + dead} outcomes")
    return found


def render(s: Summary) -> str:
    """The human summary."""
    api, w, n = s.stand_in, s.worker, s.enqueued
    lines = [
        f"enqueued      {n['seeded']} seeded + {n['duplicates']} duplicates + "
        f"{n['unknown']} unknown + {n['malformed']} malformed entries",
        f"confirmed     {api.get('confirmed')} at the stand-in ({api.get('pending')} pending); "
        f"worker.stopped says {w.get('confirmed')}",
        f"duplicates    {w.get('duplicates')} settled without a second confirmation",
        f"dead-lettered {_counts(s.dead_by_reason)}  (XRANGE {DEAD} - +)",
        f"shortfalls    {s.shortfall} numbers in {s.reconcile_records} record(s) "
        f"(XRANGE {RECONCILE} - +)",
        f"requests      {api.get('requests_total')} at the stand-in; error answers "
        f"{_counts(api.get('errors_by_code') or {})}",
        f"retries       {_counts(w.get('retries') or {})}; "
        f"limiter.throttled logged {s.events.get('limiter.throttled', 0)} time(s)",
        f"elapsed       {s.elapsed_s:.1f} s in all; the worker drained the backlog in "
        f"{s.drain_s:.1f} s",
        f"worker log    {s.worker_log}",
    ]
    return "\n".join(lines)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def report(summary: Summary, json_out: Path | None) -> int:
    """Print the summary (and write it as JSON); 0 if every promise held, else 1."""
    ok = "every seeded number confirmed, every bad entry accounted for"
    return conclude("demo", render(summary), asdict(summary), summary.problems, json_out, ok)


def conclude(
    label: str,
    text: str,
    data: dict[str, Any],
    problems: list[str],
    json_out: Path | None,
    ok: str,
) -> int:
    """Print ``text`` (and write ``data`` as JSON to ``json_out``), then the verdict: 0 with
    ``ok`` when there are no ``problems``, else 1 naming them."""
    print(f"\n{text}")
    if json_out is not None:
        json_out.write_text(json.dumps(data, indent=2))
    if problems:
        print(f"{label} failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"{label} ok: {ok}")
    return 0
