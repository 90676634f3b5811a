"""DriftingBandit: a seeded contextual bandit with non-linear rewards, abrupt changes and drift."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from coreason_runtime._exceptions import BanditError, InvalidArmError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]

__all__ = ["DriftingBandit"]


@dataclass
class DriftingBandit:
    """K arms, d-dimensional contexts, non-linear mean rewards that drift and jump.

    Contexts are uniform on ``[-1, 1]^d``. Arm ``a``'s mean reward at round ``t`` is a sum of
    ``bumps`` Gaussian bumps, ``μ_a(x, t) = Σ_i h_ai exp(-‖x - p_ai(t)‖² / 2 s_ai²)``, with
    heights ``h ∈ [0.4, 1]`` and widths ``s`` drawn per bump from ``width``. The bump centres
    move at a constant small velocity (``drift`` units of distance per 1,000 rounds, reflected
    at the box's faces): slow drift. Every ``change_every`` rounds every bump is redrawn:
    an abrupt change. The reward seen is ``μ + N(0, noise²)``.

    The environment is oblivious (nothing depends on the actions), so the whole horizon is
    drawn up front from ``seed``: the same seed gives the same contexts, means and noise.

    Parameters
    ----------
    d, k, horizon, seed:
        Context dimension, arms, rounds, and the seed of everything random.
    bumps, noise, drift, change_every:
        As above. ``change_every=0`` means no abrupt change.

    Attributes
    ----------
    contexts, means, noise_draws:
        The whole horizon, drawn up front: contexts (rounds × d), mean rewards (rounds × k)
        and the noise added to them (rounds × k), so the reward of ``a`` at ``t`` is
        ``means[t, a] + noise_draws[t, a]``.
    """

    d: int = 5
    k: int = 5
    horizon: int = 20_000
    seed: int = 0
    bumps: int = 3
    noise: float = 0.1
    drift: float = 0.15
    change_every: int = 4_000
    width: tuple[float, float] = (0.35, 0.8)
    contexts: FloatArray = field(init=False, repr=False)
    means: FloatArray = field(init=False, repr=False)
    noise_draws: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for label, value in (
            ("d", self.d),
            ("k", self.k),
            ("horizon", self.horizon),
            ("bumps", self.bumps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{label} must be a positive integer, got {value!r}"
                raise BanditError(msg)
        if self.change_every < 0 or not math.isfinite(self.noise) or self.noise < 0:
            msg = "change_every and noise must be non-negative"
            raise BanditError(msg)
        rng = np.random.default_rng(self.seed)
        t_all, d, k, b = self.horizon, self.d, self.k, self.bumps
        self.contexts = rng.uniform(-1.0, 1.0, size=(t_all, d))
        self.means = np.empty((t_all, k))
        period = self.change_every or t_all
        for start in range(0, t_all, period):
            stop = min(t_all, start + period)
            centres = rng.uniform(-1.0, 1.0, size=(k, b, d))
            heights = rng.uniform(0.4, 1.0, size=(k, b))
            inv2s2 = 0.5 / rng.uniform(*self.width, size=(k, b)) ** 2
            direction = rng.normal(size=(k, b, d))
            direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
            velocity = direction * (self.drift / 1000.0)
            for lo in range(start, stop, 1000):  # chunks bound memory at 1000·k·b·d
                hi = min(stop, lo + 1000)
                steps = np.arange(lo - start, hi - start, dtype=np.float64)
                pos = centres[None] + steps[:, None, None, None] * velocity[None]
                pos = _reflect(pos)
                diff = self.contexts[lo:hi, None, None, :] - pos
                d2 = np.einsum("tkbd,tkbd->tkb", diff, diff)
                self.means[lo:hi] = (heights[None] * np.exp(-d2 * inv2s2[None])).sum(-1)
        self.noise_draws = rng.normal(0.0, self.noise, size=(t_all, k))

    @property
    def change_points(self) -> list[int]:
        """Rounds at which every arm's reward function was redrawn."""
        if not self.change_every:
            return []
        return list(range(self.change_every, self.horizon, self.change_every))

    def _round(self, t: int) -> int:
        if not 0 <= t < self.horizon:  # NumPy would read round -1 as the last one
            msg = f"round must be in [0, {self.horizon}), got {t!r}"
            raise BanditError(msg)
        return int(t)

    def context(self, t: int) -> FloatArray:
        """The context shown at round ``t``."""
        return np.asarray(self.contexts[self._round(t)], dtype=np.float64)

    def pull(self, t: int, arm: int) -> float:
        """The noisy reward of ``arm`` at round ``t``."""
        if not 0 <= arm < self.k:
            msg = f"arm must be in [0, {self.k}), got {arm!r}"
            raise InvalidArmError(msg)
        t = self._round(t)
        return float(self.means[t, arm] + self.noise_draws[t, arm])

    def optimal(self) -> FloatArray:
        """The best mean reward at every round (for dynamic regret)."""
        return np.asarray(self.means.max(axis=1), dtype=np.float64)


def _reflect(pos: FloatArray) -> FloatArray:
    """Fold coordinates back into ``[-1, 1]`` (a point moving on a line bounces off the faces)."""
    y = np.mod(pos + 1.0, 4.0)
    return np.where(y > 2.0, 4.0 - y, y) - 1.0
