"""Bandit policies: exploration over the RBF network, linear baselines, a mabwiser peer."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from coreason_runtime._exceptions import (
    BanditError,
    ContextDimensionError,
    InvalidArmError,
    InvalidRewardError,
    MissingExtraError,
)

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

    from coreason_runtime.bandit._network import GrowingRBFNet

    FloatArray = NDArray[np.float64]

__all__ = [
    "DiscountedLinUCB",
    "EpsilonGreedyLinear",
    "LinUCB",
    "MabwiserPolicy",
    "Policy",
    "RBFPolicy",
    "SlidingWindowLinUCB",
]


class Policy(Protocol):
    """What the runner drives: choose an arm for a context, then learn from its reward."""

    name: str

    def select(self, x: ArrayLike) -> int: ...

    def update(self, x: ArrayLike, arm: int, reward: float) -> None: ...


def _check(x: ArrayLike, d: int) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (d,):
        msg = f"context must have shape ({d},), got {arr.shape}"
        raise ContextDimensionError(msg)
    if not math.isfinite(arr.sum()):  # one reduction: NaN and ±inf both poison the sum
        msg = "context contains NaN or infinite values"
        raise ContextDimensionError(msg)
    return arr


def _check_feedback(arm: int, reward: float, k: int) -> tuple[int, float]:
    if isinstance(arm, bool) or not isinstance(arm, (int, np.integer)) or not 0 <= arm < k:
        msg = f"arm must be an integer in [0, {k}), got {arm!r}"
        raise InvalidArmError(msg)
    try:
        r = float(reward)
    except (TypeError, ValueError) as e:
        msg = f"reward must be a finite number, got {reward!r}"
        raise InvalidRewardError(msg) from e
    if not math.isfinite(r):
        msg = f"reward must be finite, got {reward!r}"
        raise InvalidRewardError(msg)
    return int(arm), r


# --- exploration over the network's outputs -------------------------------------------------


def _ucb(pol: RBFPolicy, y: FloatArray, var: FloatArray) -> int:
    return int(np.argmax(y + pol.alpha * np.sqrt(var)))


def _thompson(pol: RBFPolicy, y: FloatArray, var: FloatArray) -> int:
    return int(np.argmax(y + pol.alpha * np.sqrt(var) * pol.rng.standard_normal(y.shape[0])))


def _egreedy(pol: RBFPolicy, y: FloatArray, var: FloatArray) -> int:
    if pol.rng.random() < pol.epsilon:
        return int(pol.rng.integers(y.shape[0]))
    return int(np.argmax(y))


_EXPLORERS: dict[str, Callable[[RBFPolicy, FloatArray, FloatArray], int]] = {
    "ucb": _ucb,
    "thompson": _thompson,
    "egreedy": _egreedy,
}


class RBFPolicy:
    """Choose arms from a :class:`GrowingRBFNet`'s per-arm outputs.

    ``explore`` picks how: ``"ucb"`` adds ``α·√v_a(x)`` where ``v_a(x)`` is the network's
    least-squares variance of arm ``a``'s output at ``x`` (``GrowingRBFNet.variance``);
    ``"thompson"`` adds Gaussian noise of that scale; ``"egreedy"`` explores uniformly with
    probability ``ε``.

    Raises
    ------
    BanditError
        ``explore`` names no known rule.
    """

    def __init__(
        self,
        net: GrowingRBFNet,
        *,
        explore: str = "ucb",
        alpha: float = 0.08,
        epsilon: float = 0.05,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        if explore not in _EXPLORERS:
            msg = f"explore must be one of {sorted(_EXPLORERS)}, got {explore!r}"
            raise BanditError(msg)
        self.net = net
        self.explore = explore
        self._rule = _EXPLORERS[explore]
        self.alpha, self.epsilon = alpha, epsilon
        self.rng = np.random.default_rng(seed)
        self.name = name or f"GRBF-{explore}"

    def select(self, x: ArrayLike) -> int:
        y, var = self.net.predict_and_variance(x, variance=self.explore != "egreedy")
        return self._rule(self, y, y if var is None else var)

    def update(self, x: ArrayLike, arm: int, reward: float) -> None:
        self.net.update(x, arm, reward)


# --- linear baselines ------------------------------------------------------------------------


class LinUCB:
    """Disjoint LinUCB (Li et al. 2010): a ridge model per arm on ``[x, 1]`` plus ``α·√(zᵀA⁻¹z)``.

    Stationary: it never forgets. ``A⁻¹`` is kept by Sherman–Morrison, one rank-1 update a
    round, vectorised over arms for the choice.
    """

    def __init__(
        self,
        d: int,
        k: int,
        *,
        alpha: float = 0.5,
        lam: float = 1.0,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        self.d, self.k, self.alpha, self.lam = d, k, alpha, lam
        p = d + 1
        self._a: FloatArray = np.tile(np.eye(p) * lam, (k, 1, 1))
        self._ainv: FloatArray = np.tile(np.eye(p) / lam, (k, 1, 1))
        self._b: FloatArray = np.zeros((k, p))
        self._theta: FloatArray = np.zeros((k, p))
        self.rng = np.random.default_rng(seed)
        self.name = name or type(self).__name__

    def _feat(self, x: ArrayLike) -> FloatArray:
        z = np.ones(self.d + 1)
        z[: self.d] = _check(x, self.d)
        return z

    def scores(self, z: FloatArray) -> FloatArray:
        az = np.einsum("kij,j->ki", self._ainv, z)
        out: FloatArray = self._theta @ z + self.alpha * np.sqrt(np.maximum(az @ z, 0.0))
        return out

    def select(self, x: ArrayLike) -> int:
        return int(np.argmax(self.scores(self._feat(x))))

    def estimate(self, x: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Per arm at ``x``: the ridge estimate ``θᵀz`` and its width ``√(zᵀA⁻¹z)`` (the UCB
        is ``mean + α·width``)."""
        z = self._feat(x)
        az = np.einsum("kij,j->ki", self._ainv, z)
        mean: FloatArray = self._theta @ z
        width: FloatArray = np.sqrt(np.maximum(az @ z, 0.0))
        return mean, width

    def update(self, x: ArrayLike, arm: int, reward: float) -> None:
        z = self._feat(x)
        arm, r = _check_feedback(arm, reward, self.k)
        self._learn(z, arm, r)

    def _learn(self, z: FloatArray, arm: int, r: float) -> None:
        ainv = self._ainv[arm]
        az = ainv @ z
        ainv -= np.outer(az, az) / (1.0 + z @ az)
        self._a[arm] += np.outer(z, z)
        self._b[arm] += r * z
        self._theta[arm] = ainv @ self._b[arm]


class SlidingWindowLinUCB(LinUCB):
    """LinUCB on the last ``window`` observations only: the oldest leaves as a new one enters."""

    def __init__(self, d: int, k: int, *, window: int = 2000, **kw: Any) -> None:
        super().__init__(d, k, **kw)
        self.window = window
        self._buf: collections.deque[tuple[FloatArray, int, float]] = collections.deque()

    def _learn(self, z: FloatArray, arm: int, r: float) -> None:
        self._a[arm] += np.outer(z, z)
        self._b[arm] += r * z
        self._buf.append((z, arm, r))
        touched = [arm]
        if len(self._buf) > self.window:
            z0, a0, r0 = self._buf.popleft()
            self._a[a0] -= np.outer(z0, z0)
            self._b[a0] -= r0 * z0
            touched.append(a0)
        idx = np.unique(touched)
        self._ainv[idx] = np.linalg.inv(self._a[idx])  # exact inverse: no downdate drift
        self._theta[idx] = np.einsum("kij,kj->ki", self._ainv[idx], self._b[idx])


class DiscountedLinUCB(LinUCB):
    """LinUCB whose statistics decay by ``gamma`` every round (D-LinUCB, Russac et al. 2019).

    ``A ← γA + (1-γ)λI + zzᵀ`` and ``b ← γb + rz`` for every arm, so unpulled arms regain
    their exploration bonus. The bonus uses ``A⁻¹`` (not the paper's ``A⁻¹ÃA⁻¹``).
    """

    def __init__(self, d: int, k: int, *, gamma: float = 0.998, **kw: Any) -> None:
        super().__init__(d, k, **kw)
        self.gamma = gamma
        self._reg = (1.0 - gamma) * self.lam * np.eye(d + 1)

    def _learn(self, z: FloatArray, arm: int, r: float) -> None:
        self._a *= self.gamma
        self._a += self._reg
        self._b *= self.gamma
        self._a[arm] += np.outer(z, z)
        self._b[arm] += r * z
        self._ainv = np.asarray(np.linalg.inv(self._a), dtype=np.float64)
        self._theta = np.einsum("kij,kj->ki", self._ainv, self._b)


class EpsilonGreedyLinear(LinUCB):
    """Per-arm ridge regression, greedy with probability ``1-ε``, uniform otherwise."""

    def __init__(self, d: int, k: int, *, epsilon: float = 0.05, **kw: Any) -> None:
        super().__init__(d, k, alpha=0.0, **kw)
        self.epsilon = epsilon

    def select(self, x: ArrayLike) -> int:
        z = self._feat(x)
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.k))
        return int(np.argmax(self._theta @ z))


# --- the peer library ------------------------------------------------------------------------


class MabwiserPolicy:
    """A policy from the `mabwiser` library (Fidelity), driven one round at a time.

    ``learning_policy`` is a mabwiser ``LearningPolicy`` (default ``LinUCB(alpha)``) and
    ``neighborhood_policy`` an optional ``NeighborhoodPolicy``. mabwiser's ``partial_fit``
    costs far more per call than one round's arithmetic, so observations are buffered and fed
    in batches of ``batch`` rounds (the choice in between uses the last fit).

    Raises
    ------
    MissingExtraError
        mabwiser is not installed.
    """

    def __init__(
        self,
        d: int,
        k: int,
        *,
        learning_policy: Any = None,
        neighborhood_policy: Any = None,
        alpha: float = 0.5,
        batch: int = 20,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        try:
            from mabwiser.mab import MAB, LearningPolicy
        except ImportError as e:
            raise MissingExtraError("mabwiser", "bandit") from e
        self.d, self.k, self.batch = d, k, batch
        lp = learning_policy if learning_policy is not None else LearningPolicy.LinUCB(alpha=alpha)
        kwargs: dict[str, Any] = {"seed": seed}
        if neighborhood_policy is not None:
            kwargs["neighborhood_policy"] = neighborhood_policy
        self._mab = MAB(arms=list(range(k)), learning_policy=lp, **kwargs)
        self._fitted = False
        self._xs: list[FloatArray] = []
        self._arms: list[int] = []
        self._rewards: list[float] = []
        self.rng = np.random.default_rng(seed)
        self.name = name or "mabwiser-" + type(lp).__name__

    def select(self, x: ArrayLike) -> int:
        arr = _check(x, self.d)
        if not self._fitted:
            return int(self.rng.integers(self.k))
        return int(self._mab.predict(arr[None, :]))

    def update(self, x: ArrayLike, arm: int, reward: float) -> None:
        arr = _check(x, self.d)
        arm, r = _check_feedback(arm, reward, self.k)
        self._xs.append(arr)
        self._arms.append(arm)
        self._rewards.append(r)
        if len(self._xs) >= self.batch:
            xs, arms, rewards = np.array(self._xs), self._arms, self._rewards
            if self._fitted:
                self._mab.partial_fit(arms, rewards, xs)
            else:
                self._mab.fit(arms, rewards, xs)
                self._fitted = True
            self._xs, self._arms, self._rewards = [], [], []
