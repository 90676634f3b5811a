"""An inverse problem on a fidelity ladder: fit a diffusion coefficient, escalating grids."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coreason_runtime._exceptions import SimulationError
from coreason_runtime.sim._cases import gaussian_pulse
from coreason_runtime.sim._physics import Diffusion
from coreason_runtime.sim._simulation import MultiFidelitySimulation
from coreason_runtime.sim._whatif import Prediction, WhatIfGate

__all__ = ["DiffusionInverseProblem", "FitResult", "LadderResult"]


@dataclass(frozen=True)
class FitResult:
    """One fit at one fidelity: the estimate and what it cost."""

    n: int
    kappa: float
    solves: int
    cell_updates: int
    wall_s: float


@dataclass
class LadderResult:
    """A walk up the fidelity ladder: every fit (dry runs included) and the final estimate."""

    fits: list[FitResult] = field(default_factory=list)
    dry_runs: list[FitResult] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kappa(self) -> float:
        return self.fits[-1].kappa

    @property
    def cell_updates(self) -> int:
        return sum(f.cell_updates for f in self.fits + self.dry_runs)

    @property
    def wall_s(self) -> float:
        return sum(f.wall_s for f in self.fits + self.dry_runs)


class DiffusionInverseProblem:
    """Recover ``κ`` from a Gaussian pulse observed on ``sensors × sensors`` cells at ``t_obs``.

    The forward model is the explicit heat solver on an ``n × n`` grid; its discretisation
    error biases the estimate by ``O(h²)``, which is what makes higher fidelity worth
    paying for, up to a point.
    """

    def __init__(
        self,
        observed: np.ndarray,
        *,
        t_obs: float,
        sigma: float = 0.05,
        centre: tuple[float, float] = (0.45, 0.55),
        sensors: int = 16,
    ) -> None:
        observed = np.asarray(observed, dtype=np.float64)
        if observed.shape != (sensors, sensors) or not np.all(np.isfinite(observed)):
            msg = f"observed data must be a finite {sensors}x{sensors} array"
            raise SimulationError(msg)
        self.observed, self.t_obs, self.sigma = observed, t_obs, sigma
        self.centre, self.sensors = centre, sensors

    @classmethod
    def synthetic(
        cls, kappa: float, *, t_obs: float = 2e-3, sensors: int = 16, **kwargs: Any
    ) -> DiffusionInverseProblem:
        """Noise-free data from the exact solution with coefficient ``kappa``."""
        sigma = kwargs.get("sigma", 0.05)
        centre = kwargs.get("centre", (0.45, 0.55))
        case = gaussian_pulse(kappa=kappa, sigma=sigma, centre=centre)
        e = np.linspace(0.0, 1.0, sensors + 1)
        assert case.exact is not None
        return cls(
            case.exact(t_obs)(e, e)[0], t_obs=t_obs, sigma=sigma, centre=centre, sensors=sensors
        )

    def forward(self, kappa: float, n: int) -> tuple[np.ndarray, int]:
        """Sensor readings predicted with coefficient ``kappa`` on an ``n × n`` grid."""
        if n % self.sensors or not kappa > 0:
            msg = f"grid {n} must be a multiple of {self.sensors} and kappa > 0 (got {kappa})"
            raise SimulationError(msg)
        case = gaussian_pulse(kappa=kappa, sigma=self.sigma, centre=self.centre)
        sim = MultiFidelitySimulation(Diffusion(kappa), case, n=n, block=n // 4, window=64)
        res = sim.run(self.t_obs)
        k = n // self.sensors
        u = sim.grid.coarse_numpy()[0].reshape(self.sensors, k, self.sensors, k).mean((1, 3))
        return u, res.cell_updates

    def fit(self, n: int, kappa0: float, *, rtol: float = 1e-6, max_iter: int = 8) -> FitResult:
        """Gauss–Newton on the sensor misfit, with a forward-difference derivative."""
        t0 = time.perf_counter()
        kappa, solves, work = kappa0, 0, 0
        for _ in range(max_iter):
            base, w0 = self.forward(kappa, n)
            dk = 1e-4 * kappa
            bumped, w1 = self.forward(kappa + dk, n)
            solves, work = solves + 2, work + w0 + w1
            jac = ((bumped - base) / dk).ravel()
            r = (base - self.observed).ravel()
            curvature = float(jac @ jac)
            if not (curvature > 0 and np.isfinite(curvature)):
                msg = (
                    f"the sensors do not respond to kappa at kappa={kappa:.6g} on {n}x{n} "
                    "(zero or non-finite Jacobian): kappa cannot be fitted from them"
                )
                raise SimulationError(msg)
            step = float(jac @ r) / curvature
            kappa = max(kappa - step, 0.5 * kappa)
            if abs(step) < rtol * kappa:
                break
        return FitResult(n, kappa, solves, work, time.perf_counter() - t0)

    def ladder(
        self,
        fidelities: list[int],
        *,
        kappa0: float,
        gate: WhatIfGate | None = None,
        order: int = 2,
        safety: float = 1.25,
    ) -> LadderResult:
        """Fit at each fidelity in turn; with a ``gate``, ask it before every escalation.

        The gate's dry run is Richardson's estimate from the last two fits (the first needs
        one tiny surrogate fit at half the lowest fidelity, counted as a dry run): the
        current error is ``safety · |κ_n - κ_{n/2}| / (2^p - 1)``, escalating removes
        ``1 - 2^-p`` of it, and costs ``(n'/n)^4`` times the last fit (cells × explicit
        steps in 2D). ``safety`` is Roache's grid-convergence-index factor (1.25): the
        Richardson estimate is too small while the coarsest grids are not yet asymptotic.
        """
        if gate is not None and fidelities and (fidelities[0] // 2) % self.sensors:
            # the first escalation's dry run fits at half the lowest fidelity, which must
            # still be a multiple of the sensor grid
            msg = (
                f"with a gate the lowest fidelity must be a multiple of 2x{self.sensors} "
                f"sensors, got {fidelities[0]}"
            )
            raise SimulationError(msg)
        out = LadderResult()
        prev: FitResult | None = None
        for k, n in enumerate(fidelities):
            if k and gate is not None:
                assert prev is not None
                cur = out.fits[-1]
                if prev.n >= cur.n:  # pragma: no cover - fidelities are increasing
                    break
                err = safety * abs(cur.kappa - prev.kappa) / (2**order - 1)
                pred = Prediction(
                    err * (1 - 2.0**-order),
                    cur.cell_updates * (n / cur.n) ** 4,
                    {"from": cur.n, "to": n, "kappa": cur.kappa, "estimated_error": err},
                )
                d = gate.decide(f"escalate {cur.n}->{n}", pred)
                if not d.allowed:
                    out.refused.append(
                        {
                            "from": cur.n,
                            "to": n,
                            "gain": pred.gain,
                            "cost": pred.cost,
                            "reason": d.reason,
                        }
                    )
                    break
            if k == 0 and gate is not None:
                half = n // 2 if (n // 2) % self.sensors == 0 else n
                prev = self.fit(half, kappa0) if half != n else None
                if prev is not None:
                    out.dry_runs.append(prev)
                    kappa0 = prev.kappa
            elif out.fits:
                prev = out.fits[-1]
            fit = self.fit(n, out.fits[-1].kappa if out.fits else kappa0)
            out.fits.append(fit)
        if not out.fits:  # pragma: no cover - fidelities non-empty
            msg = "no fidelity was fitted"
            raise SimulationError(msg)
        return out
