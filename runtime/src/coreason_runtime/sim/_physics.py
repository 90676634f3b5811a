"""Finite-volume physics: numerical fluxes, stable time steps and local residuals per cell."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from coreason_runtime._exceptions import ConfigurationError
from coreason_runtime.sim._backend import Backend

__all__ = ["Diffusion", "Physics", "ShallowWater"]


class Physics(Protocol):
    """What a conservative solver needs from the equations it advances.

    States are arrays shaped ``(ncomp, ...)``; axis 0 of the spatial dimensions is x.
    """

    @property
    def name(self) -> str: ...
    @property
    def order(self) -> int:
        """Spatial order of accuracy of the scheme (the residual scales as h^order)."""

    @property
    def ncomp(self) -> int: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def positive(self) -> tuple[int, ...]:
        """Components that must stay positive (they also get slope limiting)."""

    @property
    def cfl(self) -> float:
        """Fraction of the stability bound used by :meth:`max_dt`."""

    def flux(self, xp: Any, ul: Any, ur: Any, h: float, axis: int) -> Any:
        """Numerical flux through faces whose left/right states are ``ul``/``ur``."""

    def max_dt(self, backend: Backend, u: Any, h: float) -> float:
        """The largest stable explicit step on cells of width ``h``."""

    def ghost_weight(self, factor: int) -> float:
        """Weight of the coarse value in a fine ghost cell at a coarse–fine face."""

    def wall(self, xp: Any, edge: Any, axis: int) -> Any:
        """Ghost states mirroring ``edge`` across a closed wall normal to ``axis``."""

    def residual(self, u: np.ndarray, h: float) -> np.ndarray:
        """Per-cell rate at which the scheme's discrete conservation law departs from the PDE."""

    def gradient(self, u: np.ndarray, h: float) -> np.ndarray:
        """Per-cell jump of the first component (the gradient-flag baseline's indicator)."""


def _pad_sym(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, ((width, width), (width, width)), mode="symmetric")


def _positive(owner: str, **values: float) -> None:
    for label, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            msg = f"{owner}: {label} must be a positive finite number, got {v!r}"
            raise ConfigurationError(msg)


def _jump(u0: np.ndarray) -> np.ndarray:
    p = _pad_sym(u0, 1)
    gx = 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1])
    gy = 0.5 * (p[1:-1, 2:] - p[1:-1, :-2])
    out: np.ndarray = np.sqrt(gx * gx + gy * gy)
    return out


@dataclass(frozen=True)
class Diffusion:
    """The heat equation ``u_t = κ Δu`` with zero-flux walls (FTCS, 5-point stencil).

    ``cfl`` is the fraction of the von Neumann bound ``κ dt / h² ≤ 1/4`` used per step.
    """

    kappa: float
    cfl: float = 0.9
    name: str = "diffusion"
    order: int = 2
    ncomp: int = 1
    names: tuple[str, ...] = ("u",)
    positive: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _positive("Diffusion", kappa=self.kappa, cfl=self.cfl)

    def flux(self, xp: Any, ul: Any, ur: Any, h: float, axis: int) -> Any:
        return (ul - ur) * (self.kappa / h)

    def max_dt(self, backend: Backend, u: Any, h: float) -> float:
        return self.cfl * h * h / (4.0 * self.kappa)

    def ghost_weight(self, factor: int) -> float:
        # The coarse centre lies (H + h)/2 from the fine centre, not h: scale the ghost so
        # the face gradient (g - u_f)/h equals (u_C - u_f)/((H + h)/2), a consistent flux.
        return 2.0 / (factor + 1.0)

    def wall(self, xp: Any, edge: Any, axis: int) -> Any:
        return edge

    def residual(self, u: np.ndarray, h: float) -> np.ndarray:
        # κ(Δ₄ - Δ₂)u: the second-order scheme's local truncation error, i.e. the per-cell
        # defect of the conservation law u_t + ∇·(−κ∇u) = 0 on this grid.
        p = _pad_sym(u[0], 2)
        c = p[2:-2, 2:-2]
        lap2 = (p[1:-3, 2:-2] + p[3:-1, 2:-2] + p[2:-2, 1:-3] + p[2:-2, 3:-1] - 4 * c) / h**2
        lap4 = (
            -p[:-4, 2:-2]
            + 16 * p[1:-3, 2:-2]
            + 16 * p[3:-1, 2:-2]
            - p[4:, 2:-2]
            - p[2:-2, :-4]
            + 16 * p[2:-2, 1:-3]
            + 16 * p[2:-2, 3:-1]
            - p[2:-2, 4:]
            - 60 * c
        ) / (12 * h**2)
        out: np.ndarray = self.kappa * np.abs(lap4 - lap2)
        return out

    def gradient(self, u: np.ndarray, h: float) -> np.ndarray:
        return _jump(u[0])


@dataclass(frozen=True)
class ShallowWater:
    """2D shallow water in conservative variables ``(h, hu, hv)`` with a Rusanov flux.

    Walls reflect (normal momentum mirrored). ``cfl`` bounds ``dt (a_x + a_y) / h``; ≤ 0.5
    keeps the first-order update positivity-preserving for the depth.
    """

    g: float = 9.81
    cfl: float = 0.45
    name: str = "shallow_water"
    order: int = 1
    ncomp: int = 3
    names: tuple[str, ...] = ("h", "hu", "hv")
    positive: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        _positive("ShallowWater", g=self.g, cfl=self.cfl)

    def flux(self, xp: Any, ul: Any, ur: Any, h: float, axis: int) -> Any:
        nrm, tan = 1 + axis, 2 - axis  # normal and tangential momentum components
        hl, hr = ul[0], ur[0]
        vl = ul[nrm] / xp.clip(hl, 1e-12, None)
        vr = ur[nrm] / xp.clip(hr, 1e-12, None)
        a = xp.maximum(
            xp.abs(vl) + xp.sqrt(self.g * xp.clip(hl, 0.0, None)),
            xp.abs(vr) + xp.sqrt(self.g * xp.clip(hr, 0.0, None)),
        )
        half_g = 0.5 * self.g
        f0 = 0.5 * (ul[nrm] + ur[nrm] - a * (hr - hl))
        fn = 0.5 * (
            ul[nrm] * vl
            + half_g * hl * hl
            + ur[nrm] * vr
            + half_g * hr * hr
            - a * (ur[nrm] - ul[nrm])
        )
        ft = 0.5 * (ul[tan] * vl + ur[tan] * vr - a * (ur[tan] - ul[tan]))
        return xp.stack([f0, fn, ft] if axis == 0 else [f0, ft, fn])

    def max_dt(self, backend: Backend, u: Any, h: float) -> float:
        xp = backend.xp
        depth = xp.maximum(u[0], xp.zeros_like(u[0]))
        c = xp.sqrt(self.g * depth)
        safe = xp.maximum(depth, xp.zeros_like(depth) + 1e-12)
        ax = float((xp.abs(u[1] / safe) + c).max())
        ay = float((xp.abs(u[2] / safe) + c).max())
        if not math.isfinite(ax + ay) or ax + ay <= 0:
            return math.inf if math.isfinite(ax + ay) else math.nan
        return self.cfl * h / (ax + ay)

    def ghost_weight(self, factor: int) -> float:
        return 1.0

    def wall(self, xp: Any, edge: Any, axis: int) -> Any:
        sign = [1.0, 1.0, 1.0]
        sign[1 + axis] = -1.0
        return xp.stack([edge[k] * sign[k] for k in range(3)])

    def residual(self, u: np.ndarray, h: float) -> np.ndarray:
        # The Rusanov flux is the central flux plus ½a·[U]; the divergence of that extra
        # term in the depth equation is mass the scheme moves that the PDE does not.
        pads = [np.pad(u[k], 1, mode="edge") for k in range(3)]
        p = np.stack(pads)
        p[1, 0, :], p[1, -1, :] = -p[1, 0, :], -p[1, -1, :]
        p[2, :, 0], p[2, :, -1] = -p[2, :, 0], -p[2, :, -1]
        depth = np.maximum(p[0], 1e-12)
        c = np.sqrt(self.g * np.maximum(p[0], 0.0))
        sx, sy = np.abs(p[1] / depth) + c, np.abs(p[2] / depth) + c
        ax = np.maximum(sx[:-1, 1:-1], sx[1:, 1:-1])
        ay = np.maximum(sy[1:-1, :-1], sy[1:-1, 1:])
        dx = 0.5 * ax * (p[0, 1:, 1:-1] - p[0, :-1, 1:-1])
        dy = 0.5 * ay * (p[0, 1:-1, 1:] - p[0, 1:-1, :-1])
        out: np.ndarray = np.abs(dx[1:] - dx[:-1] + dy[:, 1:] - dy[:, :-1]) / h
        return out

    def gradient(self, u: np.ndarray, h: float) -> np.ndarray:
        return _jump(u[0])
