"""Scenario 4, poison input: valid numbers mixed with every kind of malformed entry.

Bad entries (dead-lettered ``invalid_id`` as they are read): no ``id`` field, an empty id,
a 1 MB id, binary garbage, unicode, shell and SQL metacharacters, ids one character too
long, control bytes, and hundreds of fields without an id. Good entries include some that
look hostile but are valid: a valid id beside a 1 MB field, or beside hundreds of fields.

Checks: every bad entry is dead-lettered ``invalid_id`` (matched by stream entry id), every
good number is confirmed, the worker's RSS stays bounded, and good numbers flow at ≥ 80% of
the rate of a clean run with the same good numbers and no poison.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from chaos.common import Rig, expect_invariant, no_tracebacks, start_rig, stop_cleanly
from chaos.invariant import read_ledger
from chaos.procs import Stage, WorkerProc, ensure_group, numbers, wait_until
from chaos.report import Mode, Outcome, Scenario

SIZES = {"full": (8000, 4000), "reduced": (1500, 500)}
"""(good, bad) entries."""
BIG = 1024 * 1024
BIG_EVERY = 100
"""One bad entry in this many carries a 1 MB id (and one good one a 1 MB field)."""
RSS_MARGIN_BYTES = 64 * 2**20
RATE_LIMIT = 50
"""Requests/s for both runs: 1000 numbers/s, about half what one worker pushes on 2 cores,
so the comparison measures what poison takes from the good numbers, not scheduler noise."""
Fields = dict[str | bytes, str | bytes]


def _bad(i: int, rng: random.Random) -> Fields:
    kinds: list[Fields] = [
        {"task_no": "T1", "domain": "example.com"},
        {"id": ""},
        # 0xff is never valid, so random bytes can never make a valid id by chance.
        {"id": b"\xff" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 63)))},
        {"id": "tâche-n°1-☃-😀"},
        {"id": "1; rm -rf / #"},
        {"id": "' OR 1=1; DROP TABLE tasks; --"},
        {"id": "$(reboot)`id`|&&<>"},
        {"id": "a" * 65},
        {"id": "abc\x00def\r\n"},
        {f"f{n}": f"v{n}" for n in range(300)},
    ]
    if i % BIG_EVERY == 0:
        return {"id": "x" * BIG}
    return kinds[i % len(kinds)]


def _good(number: str, i: int) -> Fields:
    if i % BIG_EVERY == 1:
        return {"id": number, "domain": "d" * BIG}
    if i % BIG_EVERY == 2:
        return {"id": number, **{f"extra{n}": "x" for n in range(300)}}
    return {"id": number, "task_no": "T1", "domain": "example.com"}


def _feed(rig: Rig, entries: list[tuple[bool, Fields]]) -> list[bytes]:
    """XADD everything; the stream ids of the bad entries."""
    bad_ids: list[bytes] = []
    with rig.client() as client:
        ensure_group(client, rig.keys)
        for start in range(0, len(entries), 200):
            chunk = entries[start : start + 200]
            with client.pipeline(transaction=False) as pipe:
                for _, fields in chunk:
                    pipe.xadd(rig.keys.tasks, fields)
                added = pipe.execute()
            bad_ids += [
                entry_id for (good, _), entry_id in zip(chunk, added, strict=True) if not good
            ]
    return bad_ids


def _timed_run(
    rig: Rig, worker: WorkerProc, entries: list[tuple[bool, Fields]], good: int
) -> tuple[float, int, list[bytes]]:
    """Feed ``entries``; seconds until every good number was confirmed, peak RSS."""
    base = int(rig.api.stats()["confirmed"])
    peak = [worker.rss_bytes()]
    started = time.monotonic()
    bad_ids = _feed(rig, entries)

    def done() -> bool:
        peak.append(worker.rss_bytes())
        return int(rig.api.stats()["confirmed"]) >= base + good

    wait_until(done, timeout_s=180, what="good numbers confirmed")
    elapsed = time.monotonic() - started
    rig.wait_drained(60, "poison dead-lettered")
    return elapsed, max(peak), bad_ids


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    good_count, bad_count = SIZES[mode]
    outcome.injected = (
        f"{good_count} valid numbers mixed with {bad_count} bad entries (no id, empty, 1 MB id"
        " every 100th, binary, unicode, shell/SQL metacharacters, 65 chars, control bytes,"
        " 300 fields); some valid ids beside a 1 MB field or 300 fields; rate limit"
        f" {RATE_LIMIT}/s × batch 20 in both runs"
    )
    outcome.checked = (
        "every bad entry dead-lettered invalid_id; every good number confirmed; peak RSS ≤"
        " clean peak + 64 MB; good-number rate ≥ 80% of a clean run's"
    )
    rng = random.Random(4)
    with Stage(workdir) as stage:
        rig = start_rig(stage)
        clean = Rig(stage, rig.redis, rig.api, prefix="clean")
        clean_ids = numbers(good_count, "poison-clean")
        rig.api.seed(clean_ids)
        worker = clean.worker("clean", ACKWORKER_RATE_LIMIT=str(RATE_LIMIT))
        clean_s, clean_peak, _ = _timed_run(
            clean, worker, [(True, _good(n, i)) for i, n in enumerate(clean_ids)], good_count
        )
        stop_cleanly(outcome, worker)
        ids = numbers(good_count, "poison")
        rig.api.seed(ids)
        entries = [(True, _good(n, i)) for i, n in enumerate(ids)]
        entries += [(False, _bad(i, rng)) for i in range(bad_count)]
        rng.shuffle(entries)
        worker = rig.worker("poisoned", ACKWORKER_RATE_LIMIT=str(RATE_LIMIT))
        poison_s, poison_peak, bad_ids = _timed_run(rig, worker, entries, good_count)
        stop_cleanly(outcome, worker)
        no_tracebacks(outcome, worker)
        with rig.client() as client:
            sources = {
                fields[b"source"]
                for _, fields in client.xrange(rig.keys.dead)
                if fields[b"reason"] == b"invalid_id"
            }
            dead = read_ledger(client, rig.keys, rig.api)
        ledger = rig.ledger(ids)
    expect_invariant(outcome, ledger)
    outcome.expect(ledger.confirmed >= set(ids), "not every good number was confirmed")
    missing = [b for b in bad_ids if b not in sources]
    outcome.expect(not missing, f"{len(missing)} bad entries not dead-lettered invalid_id")
    outcome.expect(
        dead.dead_reasons == {"invalid_id": bad_count},
        f"dead letters by reason {dict(dead.dead_reasons)}, expected invalid_id {bad_count}",
    )
    ratio = clean_s / poison_s
    outcome.expect(ratio >= 0.8, f"good numbers flowed at {ratio:.0%} of the clean rate")
    outcome.expect(
        poison_peak <= clean_peak + RSS_MARGIN_BYTES,
        f"peak RSS {poison_peak / 2**20:.0f} MB, clean run {clean_peak / 2**20:.0f} MB",
    )
    outcome.figure = (
        f"good numbers {good_count / poison_s:.0f}/s with poison vs {good_count / clean_s:.0f}/s"
        f" clean ({ratio:.0%}); {len(bad_ids) - len(missing)} of {bad_count} bad entries"
        f" dead-lettered invalid_id; peak RSS {poison_peak / 2**20:.0f} MB"
        f" (clean {clean_peak / 2**20:.0f} MB)"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("4", "Poison input", run)
