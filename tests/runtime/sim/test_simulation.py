"""The multi-fidelity driver: accuracy, events, hooks, the gate, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from coreason_runtime import EventBus
from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    CFLViolationError,
    InvariantUnsatisfiableError,
    InvariantViolationError,
    NonFiniteStateError,
    SimulationError,
)
from coreason_runtime.sim import (
    Case,
    Diffusion,
    Invariant,
    MultiFidelitySimulation,
    ShallowWater,
    Watchdog,
    WhatIfGate,
    dam_break,
    gaussian_pulse,
)

PULSE = gaussian_pulse(kappa=1.0, sigma=0.02, centre=(0.3, 0.35))
T = 2e-4
u_sym = sp.Symbol("u")


def pulse_sim(**kw) -> MultiFidelitySimulation:
    kw.setdefault("n", 32)
    return MultiFidelitySimulation(Diffusion(1.0), PULSE, block=8, factor=4, **kw)


@pytest.fixture(scope="module")
def uniform_fine_error() -> float:
    sim = MultiFidelitySimulation(Diffusion(1.0), PULSE, n=128, block=8)
    sim.run(T)
    return sim.grid.error_l2(PULSE.exact(T))


def test_refined_run_matches_uniform_fine_accuracy_with_less_work(
    uniform_fine_error: float,
) -> None:
    sim = pulse_sim(watchdog=Watchdog(tol=1e-2))
    result = sim.run(T)
    assert sim.grid.error_l2(PULSE.exact(T)) <= 1.5 * uniform_fine_error
    assert 0 < sim.grid.n_refined < sim.grid.nb**2
    assert result.cell_updates < 0.5 * 128 * 128 * 80
    assert abs(result.mass_drift) < 1e-12


def test_coarse_run_without_watchdog_is_much_less_accurate(uniform_fine_error: float) -> None:
    sim = pulse_sim()
    sim.run(T)
    assert sim.grid.error_l2(PULSE.exact(T)) > 5 * uniform_fine_error


def test_every_refinement_and_window_is_published_with_its_region() -> None:
    bus = EventBus()
    pulse_sim(watchdog=Watchdog(tol=1e-2), bus=bus, workflow_id="wf").run(T)
    refined = bus.history([EventType.CELL_REFINED])
    assert refined and all(len(e.data.region) == 4 for e in refined)
    x0, x1, y0, y1 = refined[0].data.region
    assert x0 < x1 and y0 < y1 and refined[0].workflow_id == "wf"
    steps = bus.history([EventType.SIM_STEP])
    assert steps and np.array(steps[-1].data.refined).shape == (4, 4)
    assert np.array(steps[-1].data.residual).shape == (4, 4)


def test_blocks_are_coarsened_once_the_residual_is_small_again() -> None:
    bus = EventBus()
    sim = pulse_sim(watchdog=Watchdog(tol=1.0), bus=bus, window=2)
    sim.run(2e-3)  # the pulse spreads; its curvature (and residual) falls
    assert bus.history([EventType.CELL_COARSENED])
    assert sim.coarsenings > 0


def test_gate_refuses_unprofitable_refinements_and_logs_them() -> None:
    bus = EventBus()
    gate = WhatIfGate(min_gain=1e9, bus=bus)
    result = pulse_sim(watchdog=Watchdog(tol=1e-2), gate=gate, bus=bus).run(T)
    assert result.refinements == 0 and result.refusals > 0
    refusal = bus.history([EventType.WHATIF_REFUSED])[0]
    assert refusal.data.predicted_gain > 0 and refusal.data.predicted_cost > 0
    assert len(refusal.data.region) == 4


def test_hooks_residual_refine_and_check_invariants() -> None:
    bus = EventBus()
    sim = pulse_sim(watchdog=Watchdog(tol=1e-2), bus=bus)
    sim.run(T / 2)
    assert sim.residual((0.3, 0.35)) > sim.residual((0.9, 0.9))
    with pytest.raises(SimulationError, match="current time"):
        sim.residual((0.5, 0.5), t=0.0)
    assert sim.refine((31, 0), reason="manual")
    assert bus.history([EventType.CELL_REFINED])[-1].data.reason == "manual"
    assert sim.check_invariants() == []
    with pytest.raises(SimulationError, match="outside the domain"):
        sim.residual((-0.1, 0.5))  # would wrap to the far side's block


def test_fixed_step_breaking_cfl_is_refused_at_the_start() -> None:
    with pytest.raises(CFLViolationError, match="CFL"):
        pulse_sim(dt=1e-3)


def test_invariant_failing_on_the_initial_state_is_unsatisfiable() -> None:
    never = Invariant.symbolic("u above ten", u_sym > 10, [u_sym], "pointwise")
    with pytest.raises(InvariantUnsatisfiableError, match="never"):
        pulse_sim(invariants=[never])


def test_invariant_that_cannot_hold_raises_and_rolls_back() -> None:
    # ∫u² decays under diffusion, so declaring it conserved is wrong: the run must say so.
    energy = Invariant.symbolic("u² conserved", u_sym**2, [u_sym], "conserved")
    sim = pulse_sim(invariants=[energy])
    with pytest.raises(InvariantViolationError, match="u² conserved") as info:
        sim.run(T)
    assert info.value.invariant == "u² conserved"
    assert sim.t == 0.0  # rolled back to the start of the failing window


class AntiDiffusion(Diffusion):
    """Backward heat equation with a 'stable-looking' step: blows up to Inf/NaN."""

    def flux(self, xp, ul, ur, h, axis):  # type: ignore[no-untyped-def]
        return -super().flux(xp, ul, ur, h, axis)


def test_nan_appearing_mid_run_raises_and_keeps_the_last_good_state() -> None:
    sim = MultiFidelitySimulation(AntiDiffusion(1.0), PULSE, n=16, block=8, window=50)
    with pytest.raises(NonFiniteStateError, match="rolled back"):
        sim.run(1.0)
    assert np.all(np.isfinite(sim.grid.coarse_numpy()))
    assert 0 < sim.t < 1.0


def test_non_finite_initial_condition_is_refused() -> None:
    bad = Case("bad", 1.0, lambda xe, ye: np.full((1, len(xe) - 1, len(ye) - 1), np.nan))
    with pytest.raises(NonFiniteStateError, match="initial"):
        MultiFidelitySimulation(Diffusion(1.0), bad, n=16, block=8)


def test_dam_break_refines_at_the_waves_and_conserves_mass() -> None:
    case = dam_break()
    t_end = 0.5 * case.t_valid
    coarse = MultiFidelitySimulation(ShallowWater(), case, n=32, block=4)
    coarse.run(t_end)
    h_sym = sp.Symbol("h")
    positive = Invariant.symbolic(
        "positivity of h", h_sym > 0, [h_sym, sp.Symbol("hu"), sp.Symbol("hv")], "pointwise"
    )
    sim = MultiFidelitySimulation(
        ShallowWater(),
        case,
        n=32,
        block=4,
        factor=2,
        watchdog=Watchdog(tol=0.05, buffer=1),
        invariants=[positive],
    )
    result = sim.run(t_end)
    exact = case.exact(t_end)
    assert sim.grid.error_l2(exact) < coarse.grid.error_l2(exact)
    assert abs(result.mass_drift) < 1e-12
    assert 0 < sim.grid.n_refined < sim.grid.nb**2


def test_positivity_loss_refines_the_block_and_retries_then_fails_loudly() -> None:
    # cfl=1.2 puts κΔt/h² at 0.3, past the 1/4 bound: the peak cell goes negative. The
    # watchdog refines the offending block and repeats the window; the fine cells use the
    # same over-large fraction, so the invariant still fails and the run stops loudly.
    bus = EventBus()
    nonneg = Invariant.symbolic("u >= 0", u_sym >= 0, [u_sym], "pointwise")
    sharp = gaussian_pulse(kappa=1.0, sigma=0.01, centre=(0.3, 0.35))
    sim = MultiFidelitySimulation(
        Diffusion(1.0, cfl=1.2),
        sharp,
        n=32,
        block=8,
        factor=2,
        watchdog=Watchdog(tol=1e9),
        invariants=[nonneg],
        bus=bus,
    )
    with pytest.raises(InvariantViolationError, match="u >= 0") as info:
        sim.run(2e-3)
    assert info.value.region is not None
    assert sim.t == 0.0
    retried = bus.history([EventType.INVARIANT_VIOLATED])[0]
    assert retried.data.action == "refine and retry"
    refined = bus.history([EventType.CELL_REFINED])
    assert refined and {e.data.reason for e in refined} == {"invariant"}


def test_positivity_loss_with_no_room_to_refine_fails_loudly_at_once() -> None:
    # as above, but the memory limit leaves room for no fine block: the retry cannot refine,
    # so the violation must not be carried on as if a later regrid could repair it
    nonneg = Invariant.symbolic("u >= 0", u_sym >= 0, [u_sym], "pointwise")
    sharp = gaussian_pulse(kappa=1.0, sigma=0.01, centre=(0.3, 0.35))
    coarse_only = 8 * 32 * 32 * 14 + 1024  # the coarse grid's bytes, and not one block more
    sim = MultiFidelitySimulation(
        Diffusion(1.0, cfl=1.2),
        sharp,
        n=32,
        block=8,
        factor=2,
        watchdog=Watchdog(tol=1e9),
        invariants=[nonneg],
        memory_limit=coarse_only,
    )
    assert sim.grid.max_fine_blocks == 0
    with pytest.raises(InvariantViolationError, match="u >= 0"):
        sim.run(2e-3)
    assert sim.t == 0.0
