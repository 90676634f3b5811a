"""The multi-fidelity driver: coarse by default, refined where the watchdog's residual says so."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    CFLViolationError,
    InvariantUnsatisfiableError,
    InvariantViolationError,
    NonFiniteStateError,
    SimulationError,
)
from coreason_runtime.sim._backend import Backend, get_backend
from coreason_runtime.sim._cases import Case
from coreason_runtime.sim._grid import BlockGrid
from coreason_runtime.sim._invariants import Invariant, InvariantChecker, Violation
from coreason_runtime.sim._physics import Physics
from coreason_runtime.sim._watchdog import Assessment, Watchdog
from coreason_runtime.sim._whatif import Prediction, WhatIfGate

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime._events import EventBus

__all__ = ["MultiFidelitySimulation", "SimResult"]


@dataclass
class SimResult:
    """What a run did: time reached, work done (cell-updates), regrids, refusals, drift."""

    t: float
    steps: int
    cell_updates: int
    wall_s: float
    refinements: int
    coarsenings: int
    refusals: int
    mass_drift: float
    history: list[dict[str, Any]] = field(default_factory=list)


class MultiFidelitySimulation:
    """A block-structured simulation that spends fine resolution only where it is needed.

    Args:
        physics: :class:`Diffusion` or :class:`ShallowWater` (or any ``Physics``).
        case: initial condition (and exact solution, if any).
        n: coarse cells per side; ``block`` cells per block side; ``factor`` refinement.
        watchdog: decides where to refine; ``None`` runs coarse only.
        invariants: declared invariants, checked every window.
        gate: a :class:`WhatIfGate` asked before each refinement.
        backend: ``"numpy"``, ``"torch"`` or a :class:`Backend`.
        dt: a fixed coarse step (checked against the CFL bound; refined blocks subcycle);
            default: the largest stable step, recomputed every window.
        window: steps per watchdog window.
        bus, workflow_id: where events go.
        memory_limit: bytes the grid may use (see :class:`BlockGrid`).
    """

    def __init__(
        self,
        physics: Physics,
        case: Case,
        *,
        n: int,
        block: int = 8,
        factor: int = 4,
        watchdog: Watchdog | None = None,
        invariants: Sequence[Invariant] = (),
        gate: WhatIfGate | None = None,
        backend: str | Backend = "numpy",
        dt: float | None = None,
        window: int = 8,
        bus: EventBus | None = None,
        workflow_id: str | None = None,
        memory_limit: int | None = None,
        source: str = "sim",
    ) -> None:
        be = get_backend(backend) if isinstance(backend, str) else backend
        if window < 1:
            msg = f"window must be at least one step; got {window}"
            raise SimulationError(msg)
        edges = np.linspace(0.0, case.length, n + 1)
        u0 = case.initial(edges, edges)
        if not np.all(np.isfinite(u0)):
            msg = "the initial condition contains NaN or Inf"
            raise NonFiniteStateError(msg)
        self.grid = BlockGrid(
            physics,
            u0,
            length=case.length,
            block=block,
            factor=factor,
            backend=be,
            memory_limit=memory_limit,
        )
        self.physics, self.case, self.watchdog, self.gate = physics, case, watchdog, gate
        self.checker = InvariantChecker(list(invariants))
        self.fixed_dt, self.window = dt, window
        self.bus, self.workflow_id, self.source = bus, workflow_id, source
        self.t = 0.0
        self.steps = self.cell_updates = self.refinements = self.coarsenings = 0
        self.refusals = 0
        self.last: Assessment | None = None
        self._mass0 = float(self.grid.totals()[0])
        if dt is not None:
            self._check_cfl(dt)
        bad = self.checker.start(self.grid)
        if bad:
            v = bad[0]
            msg = (
                f"invariant {v.invariant!r} fails on the initial state in {len(bad)} "
                f"block(s) (first {v.block}, margin {v.value:.3g}); it can never hold"
            )
            raise InvariantUnsatisfiableError(
                msg, invariant=v.invariant, value=v.value, region=v.region, t=0.0
            )

    @classmethod
    def for_runtime(
        cls, rt: Coordinator, physics: Physics, case: Case, **kwargs: Any
    ) -> MultiFidelitySimulation:
        """A simulation publishing on the runtime's bus."""
        return cls(physics, case, bus=rt.bus, **kwargs)

    # -- hooks -----------------------------------------------------------------------------

    def _emit(self, kind: EventType, **data: Any) -> None:
        if self.bus is not None:
            self.bus.emit(kind, workflow_id=self.workflow_id, source=self.source, **data)

    def residual(self, x: Sequence[float], t: float | None = None) -> float:
        """The watchdog's residual of the block holding point ``x`` (at the last window).

        ``t`` must be ``None`` or the current time: residuals are not stored for the past.
        """
        if t is not None and not math.isclose(t, self.t, abs_tol=1e-15):
            msg = f"residuals exist only for the current time {self.t}, not {t}"
            raise SimulationError(msg)
        if self.last is None:
            msg = "no watchdog window has run yet"
            raise SimulationError(msg)
        if len(x) != 2 or not all(0.0 <= c <= self.grid.length for c in x):
            msg = f"point {tuple(x)} is outside the domain [0, {self.grid.length}]^2"
            raise SimulationError(msg)
        i = min(int(x[0] / self.grid.hc), self.grid.n - 1)
        j = min(int(x[1] / self.grid.hc), self.grid.n - 1)
        return float(self.last.residual[self.grid.block_of(i, j)])

    def refine(self, cell: tuple[int, int], *, reason: str = "manual") -> bool:
        """Refine the block holding coarse cell ``cell``; False if it already was."""
        blk = self.grid.block_of(*cell)
        return bool(self._refine([blk], reason=reason, residual=None))

    def check_invariants(self) -> list[Violation]:
        """Every declared invariant that fails now."""
        return self.checker.check(self.grid, self.t)

    # -- internals -------------------------------------------------------------------------

    def _check_cfl(self, dt: float) -> None:
        g = self.grid
        bound = self.physics.max_dt(g.backend, g.u, g.hc) / self.physics.cfl
        if not dt > 0 or not math.isfinite(dt) or dt > bound:
            msg = (
                f"time step {dt:.3g} breaks the CFL bound {bound:.3g} of the coarse "
                f"cells (h = {g.hc:.3g}); the scheme would be unstable"
            )
            raise CFLViolationError(msg)

    def _refine(
        self, blocks: list[tuple[int, int]], *, reason: str, residual: np.ndarray | None
    ) -> list[tuple[int, int]]:
        g = self.grid
        init = None
        if self.t == 0.0:  # exact fine initial data instead of interpolated coarse data

            def init(blk: tuple[int, int]) -> np.ndarray:
                x0, x1, y0, y1 = g.region(blk)
                return self.case.initial(np.linspace(x0, x1, g.m + 1), np.linspace(y0, y1, g.m + 1))

        done = g.refine(blocks, init)
        for blk in blocks:
            if blk not in done and not g.refined[blk]:
                self.refusals += 1
                self._emit(
                    EventType.WHATIF_REFUSED,
                    name="refine",
                    allowed=False,
                    reason="memory limit: no room for another fine block",
                    predicted_gain=None,
                    predicted_cost=None,
                    dry_run_s=None,
                    region=list(g.region(blk)),
                    detail={"block": list(blk)},
                )
        for blk in done:
            self.refinements += 1
            self._emit(
                EventType.CELL_REFINED,
                block=list(blk),
                region=list(g.region(blk)),
                factor=g.r,
                t=self.t,
                step=self.steps,
                reason=reason,
                residual=None if residual is None else float(residual[blk]),
            )
        return done

    def _predict(self, blk: tuple[int, int], res: float, horizon: float) -> Prediction:
        # Symbolic bound: the residual scales as h^p, so refining by r removes (1 - r^-p) of
        # it; the cost is the fine cell-updates the block adds until the end (it subcycles
        # at the fine CFL step).
        g, ph = self.grid, self.physics
        dt_f = ph.max_dt(g.backend, g.u, g.hf)
        gain = res * (1.0 - g.r ** (-ph.order))
        return Prediction(
            gain,
            g.m * g.m * horizon / dt_f,
            {"block": list(blk), "residual": res, "order": ph.order},
        )

    def _regrid(self, t_end: float) -> None:
        if self.watchdog is None:
            return
        g = self.grid
        horizon = t_end - self.t
        a = self.watchdog.assess(g, horizon)
        self.last = a
        allowed = []
        for blk in a.refine:
            if self.gate is None:
                allowed.append(blk)
                continue
            res = float(a.residual[blk])
            pred = self._predict(blk, res, horizon)
            d = self.gate.decide("refine", pred, region=list(g.region(blk)))
            if d.allowed:
                allowed.append(blk)
            else:
                self.refusals += 1
        if allowed:
            self._refine(allowed, reason="watchdog", residual=a.residual)
        for blk in g.coarsen(a.coarsen):
            self.coarsenings += 1
            self._emit(
                EventType.CELL_COARSENED,
                block=list(blk),
                region=list(g.region(blk)),
                t=self.t,
                step=self.steps,
                residual=float(a.residual[blk]),
            )

    def _snapshot(self) -> tuple[Any, ...]:
        return (self.grid.snapshot(), self.t, self.steps, self.cell_updates)

    def _restore(self, snap: tuple[Any, ...]) -> None:
        self.grid.restore(snap[0])
        self.t, self.steps, self.cell_updates = snap[1], snap[2], snap[3]

    def _window(self, t_end: float) -> None:
        g = self.grid
        dt = self.fixed_dt if self.fixed_dt is not None else g.max_dt()
        if not math.isfinite(dt) or dt <= 0:
            msg = f"no stable time step at t={self.t:.6g} (dt={dt}); the state is not finite"
            raise NonFiniteStateError(msg)
        # Overflow and NaN are detected explicitly after the window (and the window is
        # rolled back), so NumPy's floating-point warnings would only be noise here.
        with np.errstate(all="ignore"):
            for _ in range(self.window):
                if self.t >= t_end * (1 - 1e-14):
                    break
                step = min(dt, t_end - self.t)
                self.cell_updates += g.step(step)
                self.t += step
                self.steps += 1

    def _violations(self, snap: tuple[Any, ...]) -> None:
        g = self.grid
        if not (g.backend.isfinite_all(g.u) and g.backend.isfinite_all(g.fine)):
            t_bad = self.t
            self._restore(snap)
            msg = (
                f"NaN/Inf appeared between t={self.t:.6g} and t={t_bad:.6g}; the state "
                f"was rolled back to t={self.t:.6g}"
            )
            raise NonFiniteStateError(msg)
        for v in self.checker.check(g, self.t):
            self._emit(
                EventType.INVARIANT_VIOLATED,
                invariant=v.invariant,
                value=v.value,
                t=v.t,
                block=None if v.block is None else list(v.block),
                region=None if v.region is None else list(v.region),
                action=None,
            )
            # fixable only if refinement can still happen there: a watchdog, and room for a block
            fixable = (
                v.block is not None
                and not g.refined[v.block]
                and self.watchdog is not None
                and g.n_refined < g.max_fine_blocks
            )
            if not fixable:
                self._restore(snap)
                where = f" in block {v.block}" if v.block is not None else ""
                msg = (
                    f"invariant {v.invariant!r} violated at t={v.t:.6g}{where} "
                    f"(residual {v.value:.3g}) and refinement cannot restore it; "
                    f"rolled back to t={self.t:.6g}"
                )
                raise InvariantViolationError(
                    msg, invariant=v.invariant, value=v.value, region=v.region, t=v.t
                )

    def run(self, t_end: float) -> SimResult:
        """Advance to ``t_end``; every window: step, check invariants, regrid, publish.

        A pointwise invariant (positivity) failing in a coarse block rolls the window back,
        refines that block and repeats the window once.

        Raises:
            NonFiniteStateError: NaN/Inf appeared (the state is rolled back first).
            InvariantViolationError: an invariant failed where refinement cannot help.
        """
        if not t_end >= self.t or not math.isfinite(t_end):
            msg = f"t_end={t_end} must be finite and not before the current time {self.t}"
            raise SimulationError(msg)
        t0 = time.perf_counter()
        history: list[dict[str, Any]] = []
        self._regrid(t_end)
        while self.t < t_end * (1 - 1e-14):
            snap = self._snapshot()
            self._window(t_end)
            bad = [v for v in self.checker.check(self.grid, self.t) if v.block is not None]
            if (
                bad
                and self.watchdog is not None
                and all(not self.grid.refined[v.block] for v in bad if v.block is not None)
            ):
                for v in bad:
                    self._emit(
                        EventType.INVARIANT_VIOLATED,
                        invariant=v.invariant,
                        value=v.value,
                        t=v.t,
                        block=list(v.block or ()),
                        region=list(v.region or ()),
                        action="refine and retry",
                    )
                self._restore(snap)
                self._refine(
                    [v.block for v in bad if v.block is not None], reason="invariant", residual=None
                )
                self._window(t_end)
            self._violations(snap)
            if self.t < t_end * (1 - 1e-14):  # no point regridding after the last window
                self._regrid(t_end)
            g = self.grid
            drift = (float(g.totals()[0]) - self._mass0) / abs(self._mass0)
            row = {
                "t": self.t,
                "steps": self.steps,
                "n_refined": g.n_refined,
                "cell_updates": self.cell_updates,
                "mass_drift": drift,
                "max_residual": float(self.last.residual.max()) if self.last else 0.0,
            }
            history.append(row)
            self._emit(
                EventType.SIM_STEP,
                **row,
                refined=g.refined.astype(int).tolist(),
                residual=None if self.last is None else self.last.residual.tolist(),
            )
        g = self.grid
        g.backend.synchronize()
        drift = (float(g.totals()[0]) - self._mass0) / abs(self._mass0)
        return SimResult(
            self.t,
            self.steps,
            self.cell_updates,
            time.perf_counter() - t0,
            self.refinements,
            self.coarsenings,
            self.refusals,
            drift,
            history,
        )
