"""CS-WIF on an inverse problem: the gate stops escalating once the dry run says it won't pay."""

from __future__ import annotations

import pytest
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
        problem: DiffusionInverseProblem) -> None:
    target = 0.01
    gate = WhatIfGate(min_gain=target * 0.75)
    gated = problem.ladder([32, 64, 128], kappa0=0.8, gate=gate)
    always = problem.ladder([32, 64, 128], kappa0=0.8)
    assert abs(gated.kappa - 1.0) <= target
    assert [f.n for f in gated.fits] == [32, 64]
    assert gated.refused and gate.refusals
    assert gated.cell_updates * 3 <= always.cell_updates
