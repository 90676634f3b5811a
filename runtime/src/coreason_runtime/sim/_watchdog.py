"""The watchdog: local residuals per block and time window, and which blocks to (de)refine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from coreason_runtime._exceptions import SimulationError
from coreason_runtime.sim._grid import BlockGrid

__all__ = ["Assessment", "Watchdog"]

Indicator = Literal["residual", "gradient"] | Callable[[np.ndarray, BlockGrid], np.ndarray]


@dataclass(frozen=True)
class Assessment:
    """The watchdog's verdict for one window: per-block residuals and the blocks to change."""

    residual: np.ndarray
    refine: list[tuple[int, int]] = field(default_factory=list)
    coarsen: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Watchdog:
    """Flags blocks whose local residual says the coarse answer is wrong.

    With ``indicator="residual"`` (the invariant-gated mode) a cell's residual is the rate
    at which the coarse scheme's discrete conservation law departs from the PDE (see
    ``Physics.residual``) times the time still to simulate: the error the coarse grid would
    add there. A block is refined when its largest cell residual exceeds ``tol`` and
    coarsened again when it drops below ``coarsen_below * tol``.

    ``indicator="gradient"`` is the classic baseline: refine where the jump of the first
    component across a cell exceeds ``tol`` times the largest jump anywhere. A callable
    ``indicator(u_coarse, grid) -> per-cell array`` replaces both (the ``residual(x, t)``
    hook). ``buffer`` also refines that many rings of neighbours around flagged blocks.
    """

    tol: float
    indicator: Indicator = "residual"
    coarsen_below: float = 0.25
    buffer: int = 0

    def __post_init__(self) -> None:
        if not self.tol > 0 or not np.isfinite(self.tol):
            msg = f"watchdog tolerance must be positive and finite; got {self.tol}"
            raise SimulationError(msg)
        if not 0 <= self.coarsen_below < 1:
            msg = f"coarsen_below must be in [0, 1); got {self.coarsen_below}"
            raise SimulationError(msg)

    def cell_residual(self, grid: BlockGrid, horizon: float) -> np.ndarray:
        """Per coarse cell residual (refined blocks are judged on their averaged data)."""
        u = grid.coarse_numpy()
        if self.indicator == "residual":
            out: np.ndarray = grid.physics.residual(u, grid.hc) * max(horizon, 0.0)
            return out
        if self.indicator == "gradient":
            jump = grid.physics.gradient(u, grid.hc)
            peak = float(jump.max())
            return jump / peak if peak > 0 else jump
        return np.asarray(self.indicator(u, grid), dtype=np.float64)

    def assess(self, grid: BlockGrid, horizon: float) -> Assessment:
        """Per-block residual maxima and the blocks to refine or coarsen."""
        cell = self.cell_residual(grid, horizon)
        nb, bs = grid.nb, grid.bs
        res = cell.reshape(nb, bs, nb, bs).max(axis=(1, 3))
        hot = res > self.tol
        grown = hot.copy()
        for _ in range(self.buffer):
            g = grown.copy()
            g[1:] |= grown[:-1]
            g[:-1] |= grown[1:]
            g[:, 1:] |= grown[:, :-1]
            g[:, :-1] |= grown[:, 1:]
            grown = g
        order = np.argsort(-res, axis=None)  # most urgent first, for memory-capped grids
        refine = [
            (int(i), int(j))
            for i, j in zip(*np.unravel_index(order, res.shape), strict=True)
            if grown[i, j] and not grid.refined[i, j]
        ]
        cold = grid.refined & (res < self.coarsen_below * self.tol) & ~grown
        coarsen = [(int(i), int(j)) for i, j in zip(*np.nonzero(cold), strict=True)]
        return Assessment(res, refine, coarsen)
