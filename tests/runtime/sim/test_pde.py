"""SymPy PDEs: flux extraction, symbolic CFL bounds, derived invariants, unit checks."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from coreason_runtime._exceptions import DimensionError, SimulationError
from coreason_runtime.sim import ConservationLaw, check_dimensions, invariants_from_law

t, x, y = sp.symbols("t x y")
kappa = sp.Symbol("kappa", positive=True)
g = sp.Symbol("g", positive=True)
D = sp.Derivative
UNITS = {"u": "kg/m**2", "t": "s", "x": "m", "y": "m", "kappa": "m**2/s"}


def heat() -> tuple[sp.Eq, sp.Function]:
    u = sp.Function("u")(t, x, y)
    return sp.Eq(D(u, t), kappa * (D(u, (x, 2)) + D(u, (y, 2)))), u


def shallow_water() -> tuple[list[sp.Expr], list[sp.Function]]:
    h, hu, hv = (sp.Function(n)(t, x, y) for n in ("h", "hu", "hv"))
    return [
        D(h, t) + D(hu, x) + D(hv, y),
        D(hu, t) + D(hu**2 / h + g * h**2 / 2, x) + D(hu * hv / h, y),
        D(hv, t) + D(hu * hv / h, x) + D(hv**2 / h + g * h**2 / 2, y),
    ], [h, hu, hv]


def test_heat_equation_flux_is_minus_kappa_grad_u() -> None:
    eq, u = heat()
    law = ConservationLaw.from_pde(eq, u, t, (x, y))
    assert law.fluxes[0] == (-kappa * D(u, x), -kappa * D(u, y))
    assert law.conserved() == (0,)


def test_ftcs_cfl_bound_is_derived_as_one_quarter_in_2d() -> None:
    eq, u = heat()
    assert ConservationLaw.from_pde(eq, u, t, (x, y)).ftcs_bound() == sp.Rational(1, 4)
    assert ConservationLaw.from_pde(eq, u, t, (x,)).ftcs_bound() == sp.Rational(1, 2)


def test_pure_diffusion_implies_positivity_but_a_source_breaks_conservation() -> None:
    eq, u = heat()
    assert ConservationLaw.from_pde(eq, u, t, (x, y)).positivity_preserved()
    law = ConservationLaw.from_pde(sp.Eq(eq.lhs, eq.rhs + u), u, t, (x, y))
    assert law.conserved() == ()
    assert not law.positivity_preserved()


def test_shallow_water_wave_speeds_are_u_plus_minus_sqrt_gh() -> None:
    eqs, fields = shallow_water()
    law = ConservationLaw.from_pde(eqs, fields, t, (x, y))
    vals = {sp.Symbol("h"): 2.0, sp.Symbol("hu"): 3.0, sp.Symbol("hv"): 0.0, g: 9.81}
    speeds = sorted(float(s.subs(vals)) for s in law.wave_speeds(0))
    c = np.sqrt(9.81 * 2.0)
    assert speeds == pytest.approx([1.5 - c, 1.5, 1.5 + c])
    assert law.conserved() == (0, 1, 2)


def test_equation_without_time_derivative_is_rejected() -> None:
    u = sp.Function("u")(t, x, y)
    with pytest.raises(SimulationError, match="form"):
        ConservationLaw.from_pde(sp.Eq(D(u, x), 0), u, t, (x, y))


def test_heat_equation_has_consistent_units() -> None:
    eq, _ = heat()
    q = check_dimensions(eq, UNITS)
    assert q.dimensionality == check_dimensions(sp.Symbol("u") / t, UNITS).dimensionality


def test_mixed_units_raise_dimension_error() -> None:
    u = sp.Function("u")(t, x, y)
    with pytest.raises(DimensionError, match="different dimensions"):
        check_dimensions(sp.Eq(D(u, t), kappa * D(u, x)), UNITS)


def test_cfl_number_must_be_dimensionless() -> None:
    dt, h = sp.symbols("dt h")
    units = {**UNITS, "dt": "s", "h": "m"}
    check_dimensions(kappa * dt / h**2, units, dimensionless=True)
    with pytest.raises(DimensionError, match="dimensionless"):
        check_dimensions(kappa * dt / h, units, dimensionless=True)


def test_undeclared_unit_is_an_error() -> None:
    with pytest.raises(DimensionError, match="no unit"):
        check_dimensions(sp.Symbol("w") * t, UNITS)


def test_invariants_from_heat_law_conserve_mass_and_keep_u_nonnegative() -> None:
    eq, u = heat()
    invs = invariants_from_law(ConservationLaw.from_pde(eq, u, t, (x, y)))
    kinds = {inv.name: inv.kind for inv in invs}
    assert kinds == {"conservation of u": "conserved", "non-negativity of u": "pointwise"}
    state = np.array([[[0.0, 2.0]]])
    margin = next(i for i in invs if i.kind == "pointwise").fn(state)
    assert margin.tolist() == [[0.0, 2.0]]


def test_diffusion_solver_step_matches_the_derived_ftcs_bound() -> None:
    from coreason_runtime.sim import Diffusion, get_backend

    eq, u = heat()
    bound = float(ConservationLaw.from_pde(eq, u, t, (x, y)).ftcs_bound())
    solver = Diffusion(kappa=2.0, cfl=1.0)
    h = 0.01
    assert solver.max_dt(get_backend(), np.zeros((1, 2, 2)), h) == pytest.approx(bound * h**2 / 2.0)


def test_shallow_water_solver_speed_matches_the_derived_eigenvalues() -> None:
    from coreason_runtime.sim import ShallowWater, get_backend

    eqs, fields = shallow_water()
    law = ConservationLaw.from_pde(eqs, fields, t, (x, y))
    state = {sp.Symbol("h"): 2.0, sp.Symbol("hu"): 3.0, sp.Symbol("hv"): -1.0, g: 9.81}
    sx = max(abs(float(s.subs(state))) for s in law.wave_speeds(0))
    sy = max(abs(float(s.subs(state))) for s in law.wave_speeds(1))
    u = np.array([2.0, 3.0, -1.0]).reshape(3, 1, 1)
    solver = ShallowWater(g=9.81, cfl=1.0)
    assert solver.max_dt(get_backend(), u, 0.1) == pytest.approx(0.1 / (sx + sy))
