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


# Fixed: "entries a live worker still holds are claimed again" (worker/keeper.py refreshes
# held entries and leases) and "the worker crashes when Redis comes back without its group"
# (worker/intake.py recreates it). Add an entry here when the suite finds a new defect.
DEFECTS: tuple[Defect, ...] = ()


def defect_for(scenario_key: str) -> Defect | None:
    """The known defect that makes a scenario fail, if any."""
    return next((d for d in DEFECTS if scenario_key in d.scenarios), None)
