"""Every chaos scenario in its reduced form, so that `make test` (and CI) runs each one.

The full sizes run with `make chaos`, which also writes docs/reliability.md. A scenario
that fails here fails the same way there; its logs are in the test's tmp_path.

Scenarios marked xfail fail because of product defects the suite found (chaos/defects.py,
also listed in docs/reliability.md); they still run in full, and pass (XPASS) once the
defect is fixed, at which point its entry in chaos/defects.py should go.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.defects import defect_for
from chaos.report import Scenario
from chaos.run import SCENARIOS, run_scenario

pytestmark = pytest.mark.timeout(180)


def _params() -> list[object]:
    params: list[object] = []
    for scenario in SCENARIOS:
        defect = defect_for(scenario.key)
        marks = [pytest.mark.xfail(reason=defect.title, strict=False)] if defect else []
        params.append(pytest.param(scenario, id=f"s{scenario.key}", marks=marks))
    return params


@pytest.mark.parametrize("scenario", _params())
def test_scenario_reduced(scenario: Scenario, tmp_path: Path) -> None:
    outcome = run_scenario(scenario, tmp_path, "reduced")
    details = "\n".join([outcome.figure, *outcome.notes])
    assert outcome.ok, f"{scenario.title}: {'; '.join(outcome.failures)}\n{details}"
