"""CS-WIF on an inverse problem: the gate stops escalating once the dry run says it won't pay."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime._exceptions import SimulationError
from coreason_runtime.sim import WhatIfGate
from coreason_runtime.sim._inverse import DiffusionInverseProblem


@pytest.fixture(scope="module")
def problem() -> DiffusionInverseProblem:
    return DiffusionInverseProblem.synthetic(1.0)


def test_fit_error_shrinks_with_fidelity(problem: DiffusionInverseProblem) -> None:
    e32 = abs(problem.fit(32, 0.8).kappa - 1.0)
    e64 = abs(problem.fit(64, 0.8).kappa - 1.0)
    assert e64 < e32 / 3


def test_gated_ladder_reaches_the_target_for_less_than_always_escalating(
    problem: DiffusionInverseProblem,
) -> None:
    target = 0.01
    gate = WhatIfGate(min_gain=target * 0.75)
    gated = problem.ladder([32, 64, 128], kappa0=0.8, gate=gate)
    always = problem.ladder([32, 64, 128], kappa0=0.8)
    assert abs(gated.kappa - 1.0) <= target
    assert [f.n for f in gated.fits] == [32, 64]
    assert gated.refused and gate.refusals
    assert gated.cell_updates * 3 <= always.cell_updates


def test_gated_ladder_starting_below_twice_the_sensor_grid_is_refused_up_front(
    problem: DiffusionInverseProblem,
) -> None:
    gate = WhatIfGate(min_gain=0.0)
    with pytest.raises(SimulationError, match="multiple of 2x16"):
        problem.ladder([16, 32], kappa0=0.8, gate=gate)
    assert gate.decisions == []


def test_sensors_blind_to_kappa_cannot_be_fitted() -> None:
    # observed at t = 0 the pulse has not diffused yet: kappa leaves no trace to fit
    blind = DiffusionInverseProblem(np.zeros((16, 16)), t_obs=0.0)
    with pytest.raises(SimulationError, match="do not respond"):
        blind.fit(16, 0.8)
