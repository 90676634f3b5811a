"""DriftingBandit: seeded, non-linear, drifting, with abrupt changes."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime.bandit import BanditError, DriftingBandit, InvalidArmError


def test_same_seed_gives_the_same_bandit() -> None:
    a, b = DriftingBandit(horizon=500, seed=3), DriftingBandit(horizon=500, seed=3)
    np.testing.assert_array_equal(a.contexts, b.contexts)
    np.testing.assert_array_equal(a.means, b.means)
    assert a.pull(10, 2) == b.pull(10, 2)


def test_different_seeds_give_different_bandits() -> None:
    a, b = DriftingBandit(horizon=200, seed=1), DriftingBandit(horizon=200, seed=2)
    assert not np.allclose(a.means, b.means)


def test_shapes_follow_the_parameters() -> None:
    env = DriftingBandit(d=3, k=4, horizon=300, seed=0)
    assert env.contexts.shape == (300, 3)
    assert env.means.shape == (300, 4)
    assert env.context(5).shape == (3,)


def test_change_points_are_every_change_every_rounds() -> None:
    env = DriftingBandit(horizon=1000, change_every=300, seed=0)
    assert env.change_points == [300, 600, 900]


def test_abrupt_change_redraws_which_arm_is_best() -> None:
    env = DriftingBandit(horizon=2000, change_every=1000, drift=0.0, seed=0)
    # the same contexts, evaluated on either side of the change: the means table differs
    before = DriftingBandit(horizon=2000, change_every=0, drift=0.0, seed=0)
    assert np.allclose(env.means[:1000], before.means[:1000])
    assert not np.allclose(env.means[1000:], before.means[1000:], atol=0.05)


def test_slow_drift_moves_the_reward_function() -> None:
    still = DriftingBandit(horizon=3000, change_every=0, drift=0.0, seed=4)
    drifting = DriftingBandit(horizon=3000, change_every=0, drift=0.3, seed=4)
    early = np.abs(still.means[:100] - drifting.means[:100]).mean()
    late = np.abs(still.means[-100:] - drifting.means[-100:]).mean()
    assert early < 0.01 < late


def test_rewards_are_not_linear_in_the_context() -> None:
    env = DriftingBandit(horizon=4000, change_every=0, drift=0.0, seed=0)
    z = np.c_[env.contexts, np.ones(len(env.contexts))]
    coef, *_ = np.linalg.lstsq(z, env.means[:, 0], rcond=None)
    residual = env.means[:, 0] - z @ coef
    assert residual.var() > 0.3 * env.means[:, 0].var()


def test_pull_of_an_unknown_arm_is_a_typed_error() -> None:
    env = DriftingBandit(horizon=10, seed=0)
    with pytest.raises(InvalidArmError):
        env.pull(0, 5)


def test_nonpositive_horizon_is_rejected() -> None:
    with pytest.raises(BanditError):
        DriftingBandit(horizon=0)


@pytest.mark.parametrize("t", [-1, 10])
def test_a_round_outside_the_horizon_is_a_bandit_error(t: int) -> None:
    env = DriftingBandit(horizon=10, seed=0)
    with pytest.raises(BanditError):
        env.pull(t, 0)
    with pytest.raises(BanditError):
        env.context(t)
