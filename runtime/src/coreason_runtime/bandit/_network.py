"""GrowingRBFNet: a resource-allocating RBF network with K outputs whose growth a budget gates."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    ContextDimensionError,
    InvalidArmError,
    InvalidBudgetError,
    InvalidRewardError,
)
from coreason_runtime.bandit._budget import GrowthBudget

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

    from coreason_runtime._events import EventBus

    FloatArray = NDArray[np.float64]

__all__ = ["GrowingRBFNet"]


class GrowingRBFNet:
    """A Gaussian RBF network with a linear tail and K outputs; a runtime budget gates growth.

    ``f_a(x) = θ_aᵀ[x, 1] + Σ_j w_ja φ_j(x)`` with ``φ_j(x) = exp(-‖x - c_j‖² / 2σ_j²)``: one
    output per arm, the units (centres ``c_j``, widths ``σ_j``) shared by the arms, the linear
    tail capturing the global trend so the units spend themselves on what is not linear.

    *Growth* follows Platt's resource-allocating network (RAN): an observation ``(x, arm, r)``
    whose context is novel (farther than ``δ(t)`` from every centre) and whose error
    ``e = r - f_arm(x)`` exceeds ``err_min`` asks the growth budget for a unit centred at ``x``
    with weight ``e`` on that arm and width ``κ·(distance to the nearest centre)``. The budget
    is owned by the runtime: a refusal leaves the network as it was (and the budget publishes
    RBF_GATED).

    *Otherwise* one recursive-least-squares step on the arm's parameters, with forgetting:
    a full ``(d+1)×(d+1)`` inverse covariance for the linear tail (``P ← P/γ`` for every arm
    each round, held below the prior ``λ⁻¹I`` in trace, then a Sherman–Morrison step for the
    pulled arm, so arms left alone regain uncertainty) and a diagonal one for the unit weights
    (``n_ja ← γ n_ja + φ_j²``), so a change in the reward function is forgotten in about
    ``1/(1-γ)`` rounds. Small gradient steps move the centres (and optionally the widths)
    along the error gradient. ``variance(x)`` is ``zᵀPz`` under the same block-diagonal ``P``:
    what the UCB and Thompson policies scale their exploration by.

    *Pruning*: every ``prune_every`` updates, units whose discounted activation mass
    ``Σ_a n_ja`` fell below ``prune_tol`` (no data near them any more) are removed; their slots
    are offered back to the budget (which restores them only if it recycles).

    All of it is vectorised over units: a round is a handful of NumPy calls on ``(m, d)`` and
    ``(m, K)`` arrays and ``K`` tiny ``(d+1)²`` systems, never a Python loop over units.

    Parameters
    ----------
    d, k:
        Context dimension and number of outputs (arms).
    growth_budget:
        A :class:`GrowthBudget` (shared with, and lowered by, the runtime), an ``int`` cap, or
        ``None`` for no cap. The network never adds a unit the budget has not granted.
    delta_max, delta_min, delta_tau:
        Novelty distance: ``δ(t) = max(δ_min, δ_max·exp(-t/τ))``.
    err_min:
        Error above which a novel input earns a unit.
    kappa, sigma_min, sigma_max:
        A new unit's width is ``κ`` times its distance to the nearest centre, clipped.
    gamma, lam:
        Forgetting factor and ridge of the least-squares steps.
    lr_centre, lr_width:
        Gradient step sizes on the centres and on ``1/2σ²`` (0 freezes them).
    reset_ratio, reset_margin:
        The change detector's trigger (see ``_watch``); ``reset_ratio=0`` turns it off.
    prune_every, prune_tol, prune_min_age:
        Pruning schedule, threshold on a unit's activation mass, and minimum age in updates.
    bus:
        Where RBF_GROWN and RBF_PRUNED are published; defaults to the budget's bus.

    Raises
    ------
    InvalidBudgetError
        ``growth_budget`` is negative or of the wrong type.
    ContextDimensionError
        ``d`` or ``k`` is not a positive integer.
    """

    def __init__(
        self,
        d: int,
        k: int,
        growth_budget: GrowthBudget | int | None = None,
        *,
        delta_max: float = 1.5,
        delta_min: float = 0.9,
        delta_tau: float = 2000.0,
        err_min: float = 0.15,
        kappa: float = 0.8,
        sigma_min: float = 0.3,
        sigma_max: float = 0.9,
        gamma: float = 0.9995,
        lam: float = 1.0,
        lr_centre: float = 0.01,
        lr_width: float = 0.0,
        reset_ratio: float = 1.6,
        reset_margin: float = 0.01,
        prune_every: int = 500,
        prune_tol: float = 0.05,
        prune_min_age: int = 1000,
        bus: EventBus | None = None,
        name: str = "grbf",
    ) -> None:
        for label, value in (("d", d), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{label} must be a positive integer, got {value!r}"
                raise ContextDimensionError(msg)
        if isinstance(growth_budget, GrowthBudget):
            budget = growth_budget
        elif growth_budget is None or isinstance(growth_budget, int):
            budget = GrowthBudget(growth_budget, bus=bus, name=name)
        else:
            msg = f"growth_budget must be a GrowthBudget, an int or None, got {growth_budget!r}"
            raise InvalidBudgetError(msg)
        self.d, self.k = d, k
        self.budget = budget
        self.bus = bus if bus is not None else budget.bus
        self.name = name
        self.delta_max, self.delta_min, self.delta_tau = delta_max, delta_min, delta_tau
        self.err_min = err_min
        self.kappa, self.sigma_min, self.sigma_max = kappa, sigma_min, sigma_max
        self.gamma, self.lam = gamma, lam
        self.lr_centre, self.lr_width = lr_centre, lr_width
        self.reset_ratio, self.reset_margin = reset_ratio, reset_margin
        self._err_short = 0.0
        self._err_long = 0.0
        self._since = 0
        self.resets = 0
        self.prune_every, self.prune_tol, self.prune_min_age = prune_every, prune_tol, prune_min_age

        p = d + 1
        self._ainv: FloatArray = np.tile(np.eye(p) / lam, (k, 1, 1))  # linear tail's P per arm
        self._theta: FloatArray = np.zeros((k, p))
        self._trace_cap = p / lam
        cap = 64
        self._c: FloatArray = np.zeros((cap, d))
        self._inv2s2: FloatArray = np.zeros(cap)  # 1 / (2σ²), what the forward pass needs
        self._w: FloatArray = np.zeros((cap, k))
        self._n: FloatArray = np.zeros((cap, k))  # discounted Σφ² per unit and arm
        self._born = np.zeros(cap, dtype=np.int64)
        self._m = 0
        self.t = 0
        self.grown = 0
        self.pruned = 0
        self.gated = 0
        self._cx: FloatArray | None = None  # cache of the last forward pass
        self._cz: FloatArray = np.ones(p)
        self._cdiff: FloatArray = self._c[:0]
        self._cd2: FloatArray = self._inv2s2[:0]
        self._cphi: FloatArray = self._inv2s2[:0]
        self._cy: FloatArray = np.zeros(k)

    # --- read-only views ---------------------------------------------------------------------

    @property
    def units(self) -> int:
        """Live units."""
        return self._m

    @property
    def centres(self) -> FloatArray:
        return self._c[: self._m].copy()

    @property
    def weights(self) -> FloatArray:
        return self._w[: self._m].copy()

    @property
    def delta(self) -> float:
        """The current novelty distance δ(t)."""
        return max(self.delta_min, self.delta_max * math.exp(-self.t / self.delta_tau))

    # --- validation --------------------------------------------------------------------------

    def _context(self, x: ArrayLike) -> FloatArray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != (self.d,):
            msg = f"context must have shape ({self.d},), got {arr.shape}"
            raise ContextDimensionError(msg)
        if not math.isfinite(arr.sum()):  # one reduction: NaN and ±inf both poison the sum
            msg = "context contains NaN or infinite values"
            raise ContextDimensionError(msg)
        return arr

    # --- forward -----------------------------------------------------------------------------

    def _forward(self, x: FloatArray) -> FloatArray:
        m = self._m
        z = np.ones(self.d + 1)
        z[: self.d] = x
        diff = self._c[:m] - x
        d2 = np.einsum("ij,ij->i", diff, diff)
        phi = np.exp(-d2 * self._inv2s2[:m])
        y: FloatArray = self._theta @ z + phi @ self._w[:m]
        self._cx, self._cz, self._cdiff, self._cd2, self._cphi, self._cy = x, z, diff, d2, phi, y
        return y

    def _cached(self, x: FloatArray) -> FloatArray:
        cx = self._cx
        if cx is not None and (cx is x or np.array_equal(cx, x)):
            return self._cy
        return self._forward(x)

    def predict(self, x: ArrayLike) -> FloatArray:
        """The K outputs at context ``x`` (a copy).

        Raises
        ------
        ContextDimensionError
            ``x`` is not a finite vector of length ``d``.
        """
        return self._forward(self._context(x)).copy()

    def variance(self, x: ArrayLike) -> FloatArray:
        """Per-arm ``zᵀPz``: how uncertain each output is at ``x`` (exploration's scale)."""
        x = self._context(x)
        self._cached(x)
        return self._variance_cached()

    def predict_and_variance(
        self, x: ArrayLike, *, variance: bool = True
    ) -> tuple[FloatArray, FloatArray | None]:
        """:meth:`predict` and (with ``variance``) :meth:`variance` at ``x`` in one pass.

        For a policy choosing an arm every round: the arrays are the net's cache, not copies,
        so read them before the next call instead of keeping them.
        """
        y = self._cached(self._context(x))
        return y, self._variance_cached() if variance else None

    def _variance_cached(self) -> FloatArray:
        z = self._cz
        lin = (self._ainv @ z) @ z
        m = self._m
        if not m:
            return lin
        phi2 = self._cphi * self._cphi
        return lin + phi2 @ (1.0 / (self._n[:m] + self.lam))

    # --- learning ----------------------------------------------------------------------------

    def update(self, x: ArrayLike, arm: int, reward: float) -> float:
        """Learn from one bandit observation; returns the prediction error before the update.

        Raises
        ------
        ContextDimensionError, InvalidArmError, InvalidRewardError
            Bad input; the network is left unchanged.
        """
        if x is not self._cx:  # the policy's select() already checked this very array
            x = self._context(x)
        if isinstance(arm, bool) or not isinstance(arm, (int, np.integer)) or not 0 <= arm < self.k:
            msg = f"arm must be an integer in [0, {self.k}), got {arm!r}"
            raise InvalidArmError(msg)
        try:
            r = float(reward)
        except (TypeError, ValueError) as e:
            msg = f"reward must be a finite number, got {reward!r}"
            raise InvalidRewardError(msg) from e
        if not math.isfinite(r):
            msg = f"reward must be finite, got {reward!r}"
            raise InvalidRewardError(msg)
        arm = int(arm)
        y = self._cached(x)
        err = r - float(y[arm])
        m = self._m
        self.t += 1
        z, phi = self._cz, self._cphi
        gamma = self.gamma
        # exponential forgetting, P ← P/γ for every arm, so arms left alone regain their
        # uncertainty; every 64 rounds P is held below the prior λ⁻¹I in trace (anti-windup)
        self._ainv *= 1.0 / gamma
        if not self.t & 63:
            trace = np.einsum("kii->k", self._ainv)
            self._ainv *= np.minimum(1.0, self._trace_cap / trace)[:, None, None]
        n = self._n[:m]
        n *= gamma
        nearest = math.sqrt(float(self._cd2.min())) if m else math.inf
        ainv = self._ainv[arm]
        pz = ainv @ z
        ainv -= np.outer(pz, pz) / (1.0 + z @ pz)  # Sherman–Morrison rank-1 step
        if nearest > self.delta and abs(err) > self.err_min:
            if self.budget.request(self.t):
                self._grow(x, arm, err, nearest)
                return err
            self.gated += 1
        if self.reset_ratio:
            self._watch(err * err)
        # one RLS step on [θ_arm, w_arm] with block-diagonal P = diag(A⁻¹, 1/(n + λ))
        pphi = phi / (n[:, arm] + self.lam)
        gain = err / (1.0 + z @ pz + phi @ pphi)
        n[:, arm] += phi * phi
        self._theta[arm] += gain * pz
        if m:
            w = self._w[:m, arm]
            if self.lr_centre or self.lr_width:
                # ∂f/∂c_j = w_j φ_j 2u_j (x - c_j);  ∂f/∂u_j = -w_j φ_j d2_j
                g = err * w * phi
                inv2s2 = self._inv2s2[:m]
                if self.lr_centre:
                    self._c[:m] -= (self.lr_centre * 2.0 * g * inv2s2)[:, None] * self._cdiff
                if self.lr_width:
                    u = inv2s2 - self.lr_width * g * self._cd2
                    np.clip(u, 0.5 / self.sigma_max**2, 0.5 / self.sigma_min**2, out=u)
                    self._inv2s2[:m] = u
            w += gain * pphi
        self._cx = None
        if self.prune_every and self.t % self.prune_every == 0:
            self.prune()
        return err

    def _watch(self, e2: float) -> None:
        """Change detector on the squared error of every arm pooled (short vs long EMA).

        When the recent error outgrows the long-run error by ``reset_ratio`` (plus the noise
        floor ``reset_margin``), the reward function has changed abruptly: every arm's
        uncertainty is reset to the prior so the next observations rewrite the weights
        quickly (and exploration resumes), instead of waiting ``1/(1-γ)`` rounds for
        forgetting to do it. The weights themselves are kept as the starting point.
        """
        # bias-corrected EMAs (as Adam's): early rounds are averaged, not read as zeros
        self._since += 1
        self._err_short += 0.02 * (e2 - self._err_short)
        self._err_long += 0.001 * (e2 - self._err_long)
        if self._since <= 300:
            return
        short = self._err_short / (1.0 - 0.98**self._since)
        long = self._err_long / (1.0 - 0.999**self._since)
        if short > self.reset_ratio * long + self.reset_margin:
            self._ainv[:] = np.eye(self.d + 1) / self.lam
            self._n[: self._m] = 0.0
            self._err_short = self._err_long = 0.0
            self._since = 0
            self.resets += 1

    def reset_arm(self, arm: int) -> None:
        """Forget how sure the network is about one output: its uncertainty goes back to the
        prior, so the next observations of that arm rewrite it quickly (a change detector
        that blames one arm calls this; the weights are kept as the starting point).

        Raises
        ------
        InvalidArmError
            ``arm`` is not an output of this network.
        """
        if isinstance(arm, bool) or not isinstance(arm, (int, np.integer)) or not 0 <= arm < self.k:
            msg = f"arm must be an integer in [0, {self.k}), got {arm!r}"
            raise InvalidArmError(msg)
        self._ainv[arm] = np.eye(self.d + 1) / self.lam
        self._n[: self._m, arm] = 0.0
        self._cx = None

    def _grow(self, x: FloatArray, arm: int, err: float, nearest: float) -> None:
        m = self._m
        if m == self._c.shape[0]:
            self._reserve(2 * m)
        sigma = self.sigma_max if not math.isfinite(nearest) else self.kappa * nearest
        sigma = min(self.sigma_max, max(self.sigma_min, sigma))
        self._c[m] = x
        self._inv2s2[m] = 0.5 / sigma**2
        self._w[m] = 0.0
        self._w[m, arm] = err  # at x the new unit's φ is 1: the arm's output becomes r
        self._n[m] = 0.0
        self._n[m, arm] = 1.0
        self._born[m] = self.t
        self._m = m + 1
        self.grown += 1
        self._cx = None
        if self.bus is not None:
            self.bus.emit(
                EventType.RBF_GROWN,
                source=self.name,
                t=self.t,
                unit=m,
                units=self._m,
                arm=arm,
                error=err,
                width=sigma,
                remaining=self.budget.remaining,
            )

    def _reserve(self, cap: int) -> None:
        def grow(a: Any) -> Any:
            out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        self._c, self._inv2s2, self._w = grow(self._c), grow(self._inv2s2), grow(self._w)
        self._n, self._born = grow(self._n), grow(self._born)

    def prune(self) -> int:
        """Remove units with no recent data near them; returns how many were removed.

        A unit goes when its discounted activation mass (summed over arms) is below
        ``prune_tol`` and it is older than ``prune_min_age`` updates. Pruned slots are refunded
        to the budget, which restores them only if it recycles.
        """
        m = self._m
        if not m:
            return 0
        mass = self._n[:m].sum(axis=1)
        keep = (mass >= self.prune_tol) | (self.t - self._born[:m] < self.prune_min_age)
        n_keep = int(keep.sum())
        removed = m - n_keep
        if not removed:
            return 0
        for a in (self._c, self._inv2s2, self._w, self._n, self._born):
            a[:n_keep] = a[:m][keep]
        self._m = n_keep
        self.pruned += removed
        self._cx = None
        self.budget.refund(removed)
        if self.bus is not None:
            self.bus.emit(
                EventType.RBF_PRUNED,
                source=self.name,
                t=self.t,
                removed=removed,
                units=n_keep,
                remaining=self.budget.remaining,
            )
        return removed

    def __repr__(self) -> str:
        return (
            f"GrowingRBFNet(d={self.d}, k={self.k}, units={self._m}, grown={self.grown}, "
            f"pruned={self.pruned}, budget={self.budget.remaining})"
        )
