"""Product defects the suite found, written once: the report lists them and the smoke test
marks the scenarios they fail as xfail with the same text. Remove an entry once it is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Defect:
    title: str
    scenarios: tuple[str, ...]
    """Keys of the scenarios it makes fail."""
    seen: str
    diagnosis: str


HELD_ENTRIES_RECLAIMED = Defect(
    title="Entries a live worker still holds are claimed again and sent a second time",
    scenarios=("3", "5", "6"),
    seen=(
        "storms: numbers of batches that were still retrying (5xx, hangs past the 1 s timeout)"
        " were sent by a second batch, the first one then got Result 0 twice and wrote a"
        " batch.shortfall/reconcile record although nothing was missing; credentials and"
        " clock skew: every number held while the send gate was closed was sent twice after it"
        " opened (re-submitted = reconcile = all of them)"
    ),
    diagnosis=(
        "worker/source.py:117 claim_stale XAUTOCLAIMs every entry idle longer than"
        " claim_idle_ms, including entries a live consumer (itself or a peer) is still retrying"
        " (processor.py:152 _attempts) or holding in front of the closed gate (gate.py:47"
        " wait_turn); the in-flight lease that should stop the second send expires at the same"
        " moment (runner.py:91 passes claim_idle_ms as dedupe lease_ms; dedupe.py:57). Nothing"
        " refreshes the entries' idle time or the leases while a batch is held. At the defaults"
        " (60 s) a batch that retries past 60 s (6 attempts × 15 s timeout can) or an auth or"
        " clock outage longer than 60 s is sent twice; each re-claim also adds a delivery, so an"
        " outage longer than max_attempts × claim_idle_ms dead-letters entries"
        " redelivered_too_often, which the send gate promises never to do. Fix direction:"
        " while a batch is held, refresh its entries (XCLAIM own-consumer 0 ids JUSTID) and"
        " extend its leases every claim_idle_ms/3."
    ),
)

NOGROUP_CRASH = Defect(
    title="The worker crashes when Redis comes back without its consumer group",
    scenarios=("2",),
    seen=(
        "Redis restarted without persistence, then a producer XADDs plainly (the input"
        " contract allows it): the worker exits with a traceback, ResponseError NOGROUP in"
        " XREADGROUP/XAUTOCLAIM, and takes no more work until something restarts it"
    ),
    diagnosis=(
        "worker/intake.py:28 REDIS_ERRORS (connection, timeout, OSError) does not cover the"
        " ResponseError NOGROUP raised by worker/source.py:111 read and :119 claim_stale, so"
        " it escapes Intake.run (intake.py:69) and the task group. The group is created only"
        " at start-up (runner.py _connect → source.py:38 ensure_group). Fix direction: on"
        " NOGROUP, call ensure_group again and go on (log it), as after any Redis outage."
    ),
)

DEFECTS = (HELD_ENTRIES_RECLAIMED, NOGROUP_CRASH)


def defect_for(scenario_key: str) -> Defect | None:
    """The known defect that makes a scenario fail, if any."""
    return next((d for d in DEFECTS if scenario_key in d.scenarios), None)
