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


# Add an entry here when the suite finds a new defect; remove it once it is fixed.
DEFECTS: tuple[Defect, ...] = ()

FIXED_DEFECTS = (
    "None open. Found by earlier runs and fixed in the product: entries a live worker still"
    " held were claimed and sent again by another replica (worker/store/leases.py now refreshes"
    " held entries and their leases every claim_idle_ms/3); the worker crashed when Redis"
    " came back without its consumer group (worker/store/source.py recreates it); after a long"
    " Redis outage, leases of abandoned batches were kept alive and blocked the entries"
    " claimed back (the lease renewer extends only leases of batches still held); a TLS"
    " certificate failure dead-lettered items as retries_exhausted (now fatal: held); an API"
    " outage dead-lettered the backlog as retries_exhausted (now a fleet-wide pause with"
    " probes, scenario 14); a lost settle reply wrote a second dead letter or reconcile record"
    " (settling is now idempotent and checks ownership, scenario 13)."
)


def defect_for(scenario_key: str) -> Defect | None:
    """The known defect that makes a scenario fail, if any."""
    return next((d for d in DEFECTS if scenario_key in d.scenarios), None)
