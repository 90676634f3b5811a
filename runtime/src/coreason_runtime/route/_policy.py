"""Routing policies: which tiers a request tries, in which order, and where it stops.

A bandit policy predicts, per tier, the chance ``p̂`` of a verified success at the request's
features (:class:`Approximator`: the growing RBF network, or LinUCB as a baseline) and, apart,
its cost ``Ĉ`` (:class:`CostBook`), so the reward is ``r̂ = p̂ − λĈ``: the two are learned
separately so that one costly request (retries, errors fed back) does not read as a tier that
fails, and a tier's drift in quality is watched on ``p̂`` alone. Walking tiers
``t₁, t₂, …`` (each tried only if those before it failed) earns
``Σᵢ rᵢ · Πⱼ₍ⱼ₎ (1 − pⱼ)``: the order that maximises it sorts tiers by ``r/p`` (an exchange
argument), and a tier with ``r ≤ 0`` only lowers it, so the plan stops before it.
Exploration is optimism: the plan uses ``min(1, p̂ + α·width) − λĈ``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from coreason_runtime.route._drift import DriftWatch

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from coreason_runtime.bandit import GrowingRBFNet, LinUCB
    from coreason_runtime.route._features import RequestContext

    FloatArray = NDArray[np.float64]

__all__ = [
    "Approximator",
    "BanditPolicy",
    "CostBook",
    "LinearApproximator",
    "RBFApproximator",
    "RoutePlan",
    "RoutingPolicy",
    "StaticCascade",
    "ThresholdRouter",
    "TierEstimate",
    "order_tiers",
]


class TierEstimate(BaseModel):
    """What a policy predicts of one tier for one request.

    ``p`` success probability, ``cost`` C, ``reward`` ``p − λ·cost``, ``optimistic`` the
    reward plus the exploration bonus, ``n`` observations of the tier so far.
    """

    model_config = ConfigDict(frozen=True)

    p: float
    cost: float
    reward: float
    optimistic: float
    n: int


class RoutePlan(BaseModel):
    """A policy's choice for one request: which tiers, in which order, and why.

    ``tiers`` are tried in order, stopping at the first answer; ``skipped`` says why each
    other tier is not tried (capability, health, not worth its price). On a result,
    ``refused`` holds the escalations the what-if gate refused on the way (a tier, or a span
    tier asked for one field), each with the gate's reason.
    """

    model_config = ConfigDict(frozen=True)

    policy: str
    family: str
    tiers: list[str]
    skipped: dict[str, str]
    reason: str
    estimates: dict[str, TierEstimate] = {}
    refused: dict[str, str] = {}


class RoutingPolicy(Protocol):
    """Plans a request over the tiers that may answer it, and learns from each tier tried."""

    name: str

    def plan(self, ctx: RequestContext, candidates: Sequence[str]) -> RoutePlan: ...

    def observe(self, ctx: RequestContext, tier: str, success: bool, cost: float) -> None: ...

    def degraded(self) -> dict[str, str]:
        """Tiers the policy stopped trusting, with why (empty for most)."""
        ...


class StaticCascade:
    """Today's cascade: every tier, in the matrix's order; the baseline and the fallback."""

    name = "static"

    def plan(self, ctx: RequestContext, candidates: Sequence[str]) -> RoutePlan:
        return RoutePlan(
            policy=self.name,
            family=ctx.family,
            tiers=list(candidates),
            skipped={},
            reason="static cascade: every tier in order",
        )

    def observe(self, ctx: RequestContext, tier: str, success: bool, cost: float) -> None:
        """A static cascade learns nothing."""

    def degraded(self) -> dict[str, str]:
        return {}


# --- approximators of the success probability ------------------------------------------


class Approximator(Protocol):
    """Per-arm estimates (of verified success) with a width for exploration, learned online."""

    name: str

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]: ...

    def update(self, x: FloatArray, arm: int, reward: float) -> None: ...

    def reset_arm(self, arm: int) -> None: ...


class RBFApproximator:
    """The project's :class:`~coreason_runtime.bandit.GrowingRBFNet` under its growth budget."""

    name = "grbf"

    def __init__(self, net: GrowingRBFNet) -> None:
        self.net = net

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        y, var = self.net.predict_and_variance(x)
        assert var is not None
        return y.copy(), np.sqrt(np.maximum(var, 0.0))

    def update(self, x: FloatArray, arm: int, reward: float) -> None:
        self.net.update(x, arm, reward)

    def reset_arm(self, arm: int) -> None:
        self.net.reset_arm(arm)


class LinearApproximator:
    """A LinUCB (or sliding-window LinUCB) ridge model per arm: the linear baselines."""

    def __init__(self, model: LinUCB, name: str = "linucb") -> None:
        self.model = model
        self.name = name

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        return self.model.estimate(x)

    def update(self, x: FloatArray, arm: int, reward: float) -> None:
        self.model.update(x, arm, reward)

    def reset_arm(self, arm: int) -> None:
        """The linear baselines have no change detector: nothing to reset."""


@dataclass
class CostBook:
    """C per tier, learned per (tier, family), then per tier, else a prior.

    ``prior(tier)`` is the cost assumed before a tier was ever seen; it also counts as
    ``prior_weight`` observations afterwards, so one unlucky first request (three attempts,
    the errors fed back) does not price a tier out before a second one is ever tried: the
    estimate is the mean of the prior and the observations until ``1/rate`` of them, then a
    moving average at ``rate`` (a tier's price can change).
    """

    prior: dict[str, float] = field(default_factory=dict)
    rate: float = 0.2
    prior_weight: float = 1.0
    _by_family: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    _by_tier: dict[str, tuple[float, int]] = field(default_factory=dict)

    def predict(self, tier: str, family: str) -> float:
        got = self._by_family.get((tier, family)) or self._by_tier.get(tier)
        return got[0] if got is not None else self.prior.get(tier, 0.0)

    def _step(self, old: tuple[float, int] | None, tier: str, cost: float) -> tuple[float, int]:
        w = self.prior_weight if tier in self.prior else 0.0
        mean, n = old if old is not None else (self.prior.get(tier, 0.0), 0)
        step = max(self.rate, 1.0 / (n + 1 + w))
        return mean + step * (cost - mean), n + 1

    def observe(self, tier: str, family: str, cost: float) -> None:
        """One tier's C on one request."""
        self._by_family[tier, family] = self._step(self._by_family.get((tier, family)), tier, cost)
        self._by_tier[tier] = self._step(self._by_tier.get(tier), tier, cost)


def order_tiers(
    candidates: Sequence[str],
    estimates: dict[str, TierEstimate],
    min_tiers: int = 1,
    min_seen: int = 2,
) -> tuple[list[str], dict[str, str]]:
    """The tiers worth trying (optimistic reward > 0), best ``r/p`` first; the rest skipped.

    A tier seen fewer than ``min_seen`` times keeps its place in the cascade (nothing is
    known to move it); the tiers with data fill the other places in ``r/p`` order. At least
    ``min_tiers`` are kept (the best by optimistic reward) even when none pays.
    """
    worth = [t for t in candidates if estimates[t].optimistic > 0]
    if len(worth) < min_tiers:
        ranked = sorted(candidates, key=lambda t: -estimates[t].optimistic)
        worth = [t for t in candidates if t in set(worth) | set(ranked[:min_tiers])]

    def ratio(t: str) -> float:
        e = estimates[t]
        p = min(1.0, max(e.optimistic + (e.p - e.reward), 1e-3))  # optimistic p = r_opt + λC
        return e.optimistic / p

    position = {t: i for i, t in enumerate(candidates)}
    learned = iter(
        sorted(
            (t for t in worth if estimates[t].n >= min_seen),
            key=lambda t: (-round(ratio(t), 9), position[t]),
        )
    )
    order = [t if estimates[t].n < min_seen else next(learned) for t in worth]
    skipped = {
        t: f"not worth its price (predicted reward {estimates[t].optimistic:+.3f})"
        for t in candidates
        if t not in order
    }
    return order, skipped


class BanditPolicy:
    """A contextual bandit over tiers: reward ``p̂ − λĈ`` per tier, ``p̂`` (verified success)
    and ``Ĉ`` learned apart.

    Parameters
    ----------
    approximator:
        The success model (:class:`RBFApproximator` for the learned policy).
    arms:
        The tier names, in arm order; a tier not among them is planned with no knowledge.
    lam, alpha:
        λ and the exploration weight on the approximator's width.
    drift:
        Watch each tier for a drop in its success (Page–Hinkley on ``s − p̂``): a tier that
        starts failing is reset in the approximator and left out of plans except for probes
        (the first ``probe_every`` requests after the alarm, then at doubling intervals while
        they fail, each on a request the tier would be tried first on), until ``recover``
        probes in a row succeed. ``drift_threshold`` is the Page–Hinkley ``h``: the alarm
        comes after at most ``⌈h / (p̂ − δ)⌉`` failures where ``p̂`` was predicted (4 at
        ``p̂ = 1``). It is 3, not less: a tier's per-request success is a noisy signal (the
        correction loop leaves a tier whose output repeats a failed one, so a tier often gets
        two tries, not three), and ``p̂`` misfits hard requests (a difficulty the features
        barely see): at ``h = 2`` three unlucky hard requests in a row held a healthy tier,
        which cost more than the watch saved (bench_route_learned, seeds 1 and 2).
    """

    def __init__(
        self,
        approximator: Approximator,
        arms: Sequence[str],
        *,
        lam: float = 1e-4,
        alpha: float = 0.3,
        costs: CostBook | None = None,
        drift: bool = True,
        probe_every: int = 10,
        recover: int = 2,
        drift_threshold: float = 3.0,
        min_tiers: int = 1,
        name: str | None = None,
    ) -> None:
        self.approximator = approximator
        self.arms = {a: i for i, a in enumerate(arms)}
        self.lam, self.alpha = lam, alpha
        self.costs = costs or CostBook()
        self.watch = (
            DriftWatch(threshold=drift_threshold, probe_every=probe_every, recover=recover)
            if drift
            else None
        )
        self.min_tiers = min_tiers
        self.counts: dict[str, int] = dict.fromkeys(arms, 0)
        self.name = name or approximator.name

    def estimates(self, ctx: RequestContext, tiers: Sequence[str]) -> dict[str, TierEstimate]:
        mean, width = self.approximator.predict(ctx.x)
        out = {}
        for t in tiers:
            cost = self.costs.predict(t, ctx.family)
            arm = self.arms.get(t)
            raw = float(mean[arm]) if arm is not None else 0.0
            w = float(width[arm]) if arm is not None else math.inf
            p = min(1.0, max(0.0, raw))
            # a sure success is the most a tier can earn
            p_opt = min(1.0, raw + self.alpha * w) if math.isfinite(w) else 1.0
            out[t] = TierEstimate(
                p=p,
                cost=cost,
                reward=p - self.lam * cost,
                optimistic=p_opt - self.lam * cost,
                n=self.counts.get(t, 0),
            )
        return out

    def plan(self, ctx: RequestContext, candidates: Sequence[str]) -> RoutePlan:
        est = self.estimates(ctx, candidates)
        held = self.watch.held(candidates) if self.watch is not None else {}
        usable = [t for t in candidates if t not in held]
        probe = self._probe(est, candidates, usable)
        order, skipped = order_tiers(usable or list(candidates), est, self.min_tiers)
        skipped.update({t: why for t, why in held.items() if t not in order})
        reason = "best r/p first: " + ", ".join(
            f"{t} p={est[t].p:.2f} C={est[t].cost:.0f} r={est[t].optimistic:+.2f}" for t in order
        )
        if probe is not None:
            order = [probe, *[t for t in order if t != probe]]
            skipped.pop(probe, None)
            reason = f"probing {probe} (degraded); then " + reason
        return RoutePlan(
            policy=self.name,
            family=ctx.family,
            tiers=order,
            skipped=skipped,
            reason=reason,
            estimates=est,
        )

    def _probe(
        self, est: dict[str, TierEstimate], candidates: Sequence[str], usable: list[str]
    ) -> str | None:
        """The held tier to probe first in this plan, if one is due and this request is one it
        would be tried first on were it trusted (or its probe is overdue): a probe spent on a
        request another tier answers for less (a CAS on a derivative) tells little."""
        if self.watch is None:
            return None
        self.watch.tick()
        tier = self.watch.due(candidates)
        if tier is None:
            return None
        trusted, _ = order_tiers([*usable, tier], est, self.min_tiers)
        if trusted[:1] != [tier] and not self.watch.overdue(tier):
            return None
        self.watch.probed(tier)
        return tier

    def observe(self, ctx: RequestContext, tier: str, success: bool, cost: float) -> None:
        arm = self.arms.get(tier)
        if arm is None:
            return
        if self.watch is not None:
            mean, _ = self.approximator.predict(ctx.x)
            p = min(1.0, max(0.0, float(mean[arm])))
            if self.watch.observe(tier, success, p):
                self.approximator.reset_arm(arm)
        self.approximator.update(ctx.x, arm, float(success))
        self.costs.observe(tier, ctx.family, cost)
        self.counts[tier] = self.counts.get(tier, 0) + 1

    def degraded(self) -> dict[str, str]:
        return self.watch.reasons() if self.watch is not None else {}


class ThresholdRouter:
    """A RouteLLM-style router: one tier per request, strong or weak, by a learned threshold.

    A logistic model (online SGD on the request's features) predicts whether the weak (first,
    cheapest) tier answers; a request goes to it when that probability is at least
    ``threshold``, else to the strong (last) tier. No escalation: RouteLLM routes once. With
    probability ``epsilon`` a request the model would send to the strong tier goes to the weak
    one, so the model keeps seeing the weak tier's outcomes.
    """

    name = "threshold"

    def __init__(
        self,
        dims: int,
        *,
        threshold: float = 0.5,
        lr: float = 0.3,
        epsilon: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.w = np.zeros(dims + 1)
        self.threshold, self.lr, self.epsilon = threshold, lr, epsilon
        self.rng = np.random.default_rng(seed)
        self._weak: str | None = None

    def _p(self, x: FloatArray) -> float:
        z = float(self.w[:-1] @ x + self.w[-1])
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def plan(self, ctx: RequestContext, candidates: Sequence[str]) -> RoutePlan:
        weak, strong = candidates[0], candidates[-1]
        self._weak = weak
        p = self._p(ctx.x)
        explore = p < self.threshold and self.rng.random() < self.epsilon
        chosen = weak if p >= self.threshold or explore else strong
        why = "exploring" if explore else (">=" if chosen == weak else "<")
        return RoutePlan(
            policy=self.name,
            family=ctx.family,
            tiers=[chosen],
            skipped={t: "routed once, no escalation" for t in candidates if t != chosen},
            reason=f"P(weak {weak} answers)={p:.2f} {why} threshold {self.threshold:g}",
        )

    def observe(self, ctx: RequestContext, tier: str, success: bool, cost: float) -> None:
        if tier != self._weak:
            return
        grad = float(success) - self._p(ctx.x)
        self.w[:-1] += self.lr * grad * ctx.x
        self.w[-1] += self.lr * grad

    def degraded(self) -> dict[str, str]:
        return {}
