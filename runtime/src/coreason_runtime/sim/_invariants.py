"""Declared invariants (symbolic or callables) and the checker that evaluates them per block."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import sympy as sp

from coreason_runtime._exceptions import SimulationError
from coreason_runtime.sim._grid import BlockGrid
from coreason_runtime.sim._pde import ConservationLaw

__all__ = ["Invariant", "InvariantChecker", "Violation", "invariants_from_law"]

Kind = Literal["conserved", "nonincreasing", "pointwise"]


@dataclass(frozen=True)
class Invariant:
    """One declared property of the solution.

    ``fn`` maps a state shaped ``(ncomp, ...)`` to a per-cell array: a density whose
    integral is conserved (``"conserved"``) or must not grow (``"nonincreasing"``), or a
    margin that must stay ``> 0`` (``>= 0`` when not ``strict``) in every cell
    (``"pointwise"``).
    """

    name: str
    kind: Kind
    fn: Callable[[np.ndarray], np.ndarray]
    rtol: float = 1e-12
    expr: Any = None
    strict: bool = True

    @classmethod
    def symbolic(
        cls, name: str, expr: Any, symbols: Sequence[sp.Symbol], kind: Kind, *, rtol: float = 1e-12
    ) -> Invariant:
        """An invariant from a SymPy expression in the component symbols.

        For ``"pointwise"``, ``expr`` may be a relation (``h > 0``); its margin is
        ``lhs - rhs``.
        """
        if kind == "pointwise" and isinstance(expr, sp.core.relational.Relational):
            if isinstance(expr, (sp.StrictLessThan, sp.LessThan)):
                body = expr.rhs - expr.lhs
            elif isinstance(expr, (sp.StrictGreaterThan, sp.GreaterThan)):
                body = expr.lhs - expr.rhs
            else:
                msg = f"pointwise invariant {expr} must be an inequality"
                raise SimulationError(msg)
        else:
            body = sp.sympify(expr)
        strict = not isinstance(expr, (sp.GreaterThan, sp.LessThan))
        compiled = sp.lambdify(list(symbols), body, "numpy")

        def fn(u: np.ndarray) -> np.ndarray:
            out = compiled(*[u[k] for k in range(len(symbols))])
            return np.broadcast_to(np.asarray(out, dtype=np.float64), u.shape[1:])

        return cls(name, kind, fn, rtol, expr, strict)


@dataclass(frozen=True)
class Violation:
    """An invariant that failed: where (block, region), by how much, and when."""

    invariant: str
    value: float
    t: float
    block: tuple[int, int] | None = None
    region: tuple[float, float, float, float] | None = None


@dataclass
class InvariantChecker:
    """Evaluates invariants on a composite grid; integrals against their values at t = 0."""

    invariants: Sequence[Invariant]
    reference: dict[str, float] = field(default_factory=dict)

    def _integral(self, inv: Invariant, grid: BlockGrid) -> tuple[float, float]:
        u, f = grid.coarse_numpy(), grid.fine_numpy()
        mask = np.repeat(np.repeat(~grid.refined, grid.bs, 0), grid.bs, 1)
        dens_c = inv.fn(u) * mask
        dens_f = inv.fn(f) if grid.n_refined else np.zeros(1)
        total = float(dens_c.sum()) * grid.hc**2 + float(dens_f.sum()) * grid.hf**2
        scale = float(np.abs(dens_c).sum()) * grid.hc**2 + float(np.abs(dens_f).sum()) * grid.hf**2
        return total, scale

    def start(self, grid: BlockGrid) -> list[Violation]:
        """Record the reference integrals; returns pointwise invariants failing already."""
        for inv in self.invariants:
            if inv.kind != "pointwise":
                self.reference[inv.name] = self._integral(inv, grid)[0]
        return [v for v in self.check(grid, 0.0) if v.block is not None]

    def check(self, grid: BlockGrid, t: float) -> list[Violation]:
        """Every violation now: global drift of integrals, per-block pointwise failures."""
        out: list[Violation] = []
        for inv in self.invariants:
            if inv.kind == "pointwise":
                out.extend(self._pointwise(inv, grid, t))
                continue
            total, scale = self._integral(inv, grid)
            ref = self.reference.get(inv.name, total)
            drift = (total - ref) / max(scale, 1e-300)
            bad = abs(drift) > inv.rtol if inv.kind == "conserved" else drift > inv.rtol
            if bad or not np.isfinite(total):
                out.append(Violation(inv.name, float(drift), t))
        return out

    def _pointwise(self, inv: Invariant, grid: BlockGrid, t: float) -> list[Violation]:
        bs, nb = grid.bs, grid.nb
        margin = inv.fn(grid.coarse_numpy()).reshape(nb, bs, nb, bs).min(axis=(1, 3))
        if grid.n_refined:
            fm = inv.fn(grid.fine_numpy()).min(axis=(1, 2))
            for k, (bi, bj) in enumerate(grid.blocks):
                margin[bi, bj] = min(margin[bi, bj], fm[k])
        out = []
        ok = margin > 0 if inv.strict else margin >= 0
        for bi, bj in zip(*np.nonzero(~ok), strict=True):
            blk = (int(bi), int(bj))
            out.append(Violation(inv.name, float(margin[blk]), t, blk, grid.region(blk)))
        return out


def invariants_from_law(
    law: ConservationLaw,
    *,
    positive: Sequence[int] = (),
    closed: Sequence[int] | None = None,
    energy: Any = None,
) -> list[Invariant]:
    """The invariants a conservation law implies on a closed (zero normal flux) domain.

    Args:
        law: the extracted law.
        positive: components that must stay positive (added as pointwise invariants; a pure
            diffusion adds its field by the maximum principle).
        closed: components whose wall flux vanishes (default: all source-free ones).
        energy: optional SymPy density in the law's symbols that must not increase.
    """
    syms = law.symbols
    conserved = [c for c in (law.conserved() if closed is None else closed) if c in law.conserved()]
    out = [
        Invariant.symbolic(f"conservation of {syms[c]}", syms[c], syms, "conserved")
        for c in conserved
    ]
    pos = set(positive)
    out += [
        Invariant.symbolic(f"positivity of {syms[c]}", syms[c] > 0, syms, "pointwise")
        for c in sorted(pos - {0} if law.positivity_preserved() else pos)
    ]
    if law.positivity_preserved():  # maximum principle: u >= 0 stays u >= 0
        out.append(
            Invariant.symbolic(f"non-negativity of {syms[0]}", syms[0] >= 0, syms, "pointwise")
        )
    if energy is not None:
        out.append(
            Invariant.symbolic("energy non-increase", energy, syms, "nonincreasing", rtol=1e-10)
        )
    return out
