"""PDEs given in SymPy form: conservation-law extraction, CFL bounds and unit checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from coreason_runtime._exceptions import DimensionError, SimulationError

__all__ = ["ConservationLaw", "check_dimensions"]


def _split(eq: Any, field: Any, t: sp.Symbol) -> list[sp.Expr]:
    """``eq`` as ``c·u_t + R = 0``; returns the terms of ``R / c``.

    Only the top level is expanded: simplifying would evaluate ``Derivative(h*u, x)`` and
    lose the conservation form the user wrote.
    """
    expr = (eq.lhs - eq.rhs) if isinstance(eq, sp.Equality) else sp.sympify(eq)
    dudt = sp.Derivative(field, t)
    coeff: sp.Expr = sp.S.Zero
    rest = []
    # Shield the derivatives so expand distributes products without evaluating them.
    shields = {d: sp.Dummy() for d in expr.atoms(sp.Derivative)}
    back = {v: k for k, v in shields.items()}
    expanded = sp.expand(expr.xreplace(shields)).xreplace(back)
    for term in sp.Add.make_args(expanded):
        c, d = term.as_independent(dudt, as_Add=False)
        if d == dudt:
            coeff += c
        else:
            rest.append(term)
    if coeff == 0 or coeff.has(t):
        msg = f"{eq} is not of the form d({field})/dt + ... = 0"
        raise SimulationError(msg)
    return [term / coeff for term in rest]


@dataclass(frozen=True)
class ConservationLaw:
    """A system ``U_t + Σ_k ∂_k F_k(U, ∇U) = S`` read off SymPy equations.

    ``fluxes[c][k]`` is the flux of component ``c`` along ``space[k]``, in the fields
    (gradients appear as ``Derivative`` of them; ``symbols[c]`` are plain stand-ins);
    ``sources[c]`` collects every term that is not a spatial derivative, so a component
    with ``sources[c] == 0`` is conserved on a closed domain.
    """

    t: sp.Symbol
    space: tuple[sp.Symbol, ...]
    fields: tuple[Any, ...]
    symbols: tuple[sp.Symbol, ...]
    fluxes: tuple[tuple[sp.Expr, ...], ...]
    sources: tuple[sp.Expr, ...]

    @classmethod
    def from_pde(
        cls,
        equations: Sequence[Any] | Any,
        fields: Sequence[Any] | Any,
        t: sp.Symbol,
        space: Sequence[sp.Symbol],
    ) -> ConservationLaw:
        """Extract the flux form from ``equations`` (one per field).

        Spatial derivatives must be left unevaluated (``sp.Derivative(h*u, x)``), which is
        how a conservation law is written; other terms become sources.

        Raises:
            SimulationError: an equation is not ``d(field)/dt + ... = 0``.
        """
        eqs = list(equations) if isinstance(equations, (list, tuple)) else [equations]
        flds = list(fields) if isinstance(fields, (list, tuple)) else [fields]
        if len(eqs) != len(flds):
            msg = f"{len(eqs)} equations for {len(flds)} fields"
            raise SimulationError(msg)
        space = tuple(space)
        syms = tuple(sp.Symbol(str(getattr(f, "func", f))) for f in flds)
        fluxes, sources = [], []
        for eq, fld in zip(eqs, flds, strict=True):
            rest = _split(eq, fld, t)
            per_dim: list[sp.Expr] = [sp.S.Zero] * len(space)
            source: sp.Expr = sp.S.Zero
            for term in rest:
                coeff, derivs = term.as_independent(sp.Derivative, as_Add=False)
                if (
                    isinstance(derivs, sp.Derivative)
                    and len(derivs.variables) >= 1
                    and derivs.variables[0] in space
                    and not coeff.has(*space)
                    and not any(coeff.has(f) for f in flds)
                ):
                    var = derivs.variables[0]
                    inner = derivs.expr
                    for v in derivs.variables[1:]:
                        inner = sp.Derivative(inner, v)
                    per_dim[space.index(var)] += coeff * inner
                else:
                    source -= term
            fluxes.append(tuple(sp.simplify(f) for f in per_dim))
            sources.append(sp.simplify(source))
        return cls(t, space, tuple(flds), syms, tuple(fluxes), tuple(sources))

    # -- derived facts ---------------------------------------------------------------------

    def conserved(self) -> tuple[int, ...]:
        """Components with no source term: their integral changes only through the boundary."""
        return tuple(c for c, s in enumerate(self.sources) if s == 0)

    def _advective(self, axis: int) -> sp.Matrix:
        plain = dict(zip(self.fields, self.symbols, strict=True))
        return sp.Matrix(
            [
                f[axis].subs(plain) if not f[axis].has(sp.Derivative) else sp.S.Zero
                for f in self.fluxes
            ]
        )

    def wave_speeds(self, axis: int) -> list[sp.Expr]:
        """Eigenvalues of ``∂F_axis/∂U`` for the advective (derivative-free) part of the flux."""
        jac = self._advective(axis).jacobian(sp.Matrix(self.symbols))
        if jac.is_zero_matrix:
            return []
        return [sp.simplify(ev) for ev in jac.eigenvals(multiple=True)]

    def diffusivities(self) -> list[sp.Expr]:
        """Coefficients ``κ`` of ``-κ ∂_k u`` in the fluxes (the parabolic part)."""
        out = []
        for c, per_dim in enumerate(self.fluxes):
            for k, f in enumerate(per_dim):
                d = sp.Derivative(self.fields[c], self.space[k])
                coeff = sp.expand(f).coeff(d)
                if coeff != 0:
                    out.append(sp.simplify(-coeff))
        return out

    def ftcs_bound(self) -> sp.Expr:
        """Largest ``κ dt / h²`` for which forward-Euler with the (2d+1)-point stencil is stable.

        Derived by von Neumann analysis: the amplification factor
        ``G = 1 + μ Σ_k (2 cos θ_k - 2)`` is smallest at ``θ_k = π``; ``|G| ≤ 1`` there.
        """
        mu = sp.Symbol("mu", positive=True)
        thetas = sp.symbols(f"theta0:{len(self.space)}", real=True)
        g = 1 + mu * sum(2 * sp.cos(th) - 2 for th in thetas)
        worst = g.subs({th: sp.pi for th in thetas})
        sol = sp.solve(sp.Ge(worst, -1), mu)
        bound = sp.solve(sp.Eq(worst, -1), mu)
        if not bound:  # pragma: no cover - G ≥ -1 always for this stencil family
            msg = f"no stability bound found ({sol})"
            raise SimulationError(msg)
        return sp.nsimplify(bound[0])

    def positivity_preserved(self) -> bool:
        """True for a pure diffusion ``u_t = ∇·(κ∇u)``, κ > 0: the maximum principle."""
        kappas = self.diffusivities()
        if len(self.fields) != 1 or not kappas or any(s != 0 for s in self.sources):
            return False
        if any(self._advective(k) != sp.zeros(1, 1) for k in range(len(self.space))):
            return False
        return all(bool(sp.ask(sp.Q.positive(k))) for k in kappas)


# -- units ----------------------------------------------------------------------------------


def _ureg() -> Any:
    import pint

    global _UREG
    if _UREG is None:
        _UREG = pint.UnitRegistry()
    return _UREG


_UREG: Any = None


def _dims(expr: Any, units: Mapping[str, Any], ureg: Any) -> Any:
    if isinstance(expr, sp.Derivative):
        out = _dims(expr.expr, units, ureg)
        for var, count in expr.variable_count:
            out = out / _dims(var, units, ureg) ** int(count)
        return out
    undefined = sp.core.function.UndefinedFunction
    if isinstance(expr, sp.Symbol) or (
        isinstance(expr, sp.Function) and isinstance(expr.func, undefined)
    ):
        name = str(getattr(expr, "func", expr)) if isinstance(expr, sp.Function) else str(expr)
        if name not in units:
            msg = f"no unit declared for {name!r}"
            raise DimensionError(msg)
        return ureg.Quantity(1.0, units[name])
    if expr.is_number:
        return ureg.Quantity(1.0, "")
    if isinstance(expr, sp.Add):
        parts = [(a, _dims(a, units, ureg)) for a in expr.args]
        first = parts[0][1]
        for term, q in parts[1:]:
            if q.dimensionality != first.dimensionality:
                msg = (
                    f"terms {parts[0][0]} [{first.units:~}] and {term} [{q.units:~}] "
                    f"have different dimensions"
                )
                raise DimensionError(msg)
        return first
    if isinstance(expr, sp.Mul):
        out = ureg.Quantity(1.0, "")
        for a in expr.args:
            out = out * _dims(a, units, ureg)
        return out
    if isinstance(expr, sp.Pow):
        base = _dims(expr.base, units, ureg)
        if not expr.exp.is_number:
            msg = f"exponent of {expr} must be a number"
            raise DimensionError(msg)
        return base ** float(expr.exp)
    for a in expr.args:  # exp, sin, log...: arguments must be dimensionless
        q = _dims(a, units, ureg)
        if not q.dimensionless:
            msg = f"argument {a} of {expr.func} has units [{q.units:~}]; it must be dimensionless"
            raise DimensionError(msg)
    return ureg.Quantity(1.0, "")


def check_dimensions(
    expr_or_eqs: Any, units: Mapping[str, Any], dimensionless: bool = False
) -> Any:
    """Check that every term of each equation (or of an expression) has the same units.

    Args:
        expr_or_eqs: a SymPy ``Eq``, expression, or a list of them.
        units: unit string (pint syntax, e.g. ``"m**2/s"``) per symbol or field name.
        dimensionless: also require the result to be dimensionless (a CFL number).

    Returns:
        The pint quantity of the (last) expression's left side, for inspection.

    Raises:
        DimensionError: mixed dimensions, an undeclared unit, or a non-dimensionless group.
    """
    ureg = _ureg()
    items = expr_or_eqs if isinstance(expr_or_eqs, (list, tuple)) else [expr_or_eqs]
    q: Any = None
    for item in items:
        expr = (item.lhs - item.rhs) if isinstance(item, sp.Equality) else sp.sympify(item)
        q = _dims(expr, units, ureg)
        if dimensionless and not q.dimensionless:
            msg = f"{expr} has units [{q.units:~}]; a dimensionless group was expected"
            raise DimensionError(msg)
    return q
