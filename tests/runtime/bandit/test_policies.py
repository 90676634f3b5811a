"""Policies: exploration over the network, the linear baselines and the mabwiser peer."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime.bandit import (
    BanditError,
    ContextDimensionError,
    DiscountedLinUCB,
    DriftingBandit,
    EpsilonGreedyLinear,
    GrowingRBFNet,
    InvalidRewardError,
    LinUCB,
    MabwiserPolicy,
    RBFPolicy,
    SlidingWindowLinUCB,
    run_bandit,
)


def _linear_env(seed: int = 0, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(3, 4))
    xs = rng.uniform(-1, 1, size=(n, 4))
    return xs, xs @ theta.T


def _regret(policy: object, xs: np.ndarray, means: np.ndarray) -> float:
    rng = np.random.default_rng(1)
    total = 0.0
    for x, mu in zip(xs, means, strict=True):
        a = policy.select(x)  # type: ignore[attr-defined]
        policy.update(x, a, float(mu[a] + rng.normal(0, 0.1)))  # type: ignore[attr-defined]
        total += float(mu.max() - mu[a])
    return total


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinUCB(4, 3),
        lambda: SlidingWindowLinUCB(4, 3, window=500),
        lambda: DiscountedLinUCB(4, 3),
        lambda: EpsilonGreedyLinear(4, 3, seed=0),
    ],
)
def test_linear_baselines_learn_a_linear_bandit(make: object) -> None:
    xs, means = _linear_env()
    random_regret = float((means.max(axis=1) - means.mean(axis=1)).sum())
    assert _regret(make(), xs, means) < 0.2 * random_regret  # type: ignore[operator]


def test_sliding_window_matches_a_fresh_fit_on_the_window() -> None:
    xs, means = _linear_env(n=300)
    sw, fresh = SlidingWindowLinUCB(4, 3, window=100), LinUCB(4, 3)
    for t, x in enumerate(xs):
        sw.update(x, t % 3, float(means[t, t % 3]))
        if t >= 200:
            fresh.update(x, t % 3, float(means[t, t % 3]))
    np.testing.assert_allclose(sw._theta, fresh._theta, atol=1e-8)


def test_discounting_restores_uncertainty_of_an_unpulled_arm() -> None:
    pol = DiscountedLinUCB(2, 2, gamma=0.99, alpha=1.0)
    x = np.array([0.5, -0.5])
    for _ in range(200):
        pol.update(x, 0, 1.0)
        pol.update(x, 1, 1.0)
    z = np.array([0.5, -0.5, 1.0])
    var_before = float(z @ pol._ainv[1] @ z)
    for _ in range(300):
        pol.update(x, 0, 1.0)
    assert float(z @ pol._ainv[1] @ z) > 5 * var_before


@pytest.mark.parametrize("explore", ["ucb", "thompson", "egreedy"])
def test_rbf_policy_explores_every_arm(explore: str) -> None:
    env = DriftingBandit(d=2, k=3, horizon=600, seed=0)
    policy = RBFPolicy(GrowingRBFNet(2, 3, None), explore=explore, alpha=1.0, epsilon=0.2, seed=0)
    run = run_bandit(env, policy)
    assert set(run.arms.tolist()) == {0, 1, 2}


def test_unknown_exploration_rule_is_a_bandit_error() -> None:
    with pytest.raises(BanditError):
        RBFPolicy(GrowingRBFNet(2, 2), explore="softmax")


def test_grbf_beats_linucb_on_a_nonlinear_bandit() -> None:
    env = DriftingBandit(d=5, k=5, horizon=6000, seed=0, change_every=0, drift=0.0)
    grbf = run_bandit(env, RBFPolicy(GrowingRBFNet(5, 5, None), seed=0))
    lin = run_bandit(env, LinUCB(5, 5))
    assert grbf.dynamic_regret < 0.8 * lin.dynamic_regret


def test_baseline_rejects_a_context_of_the_wrong_dimension() -> None:
    with pytest.raises(ContextDimensionError):
        LinUCB(4, 3).select(np.zeros(5))


@pytest.mark.parametrize("reward", [float("nan"), "high"])
def test_baseline_rejects_a_bad_reward_and_keeps_its_model(reward: object) -> None:
    pol = LinUCB(2, 2)
    pol.update(np.array([0.1, 0.2]), 0, 1.0)
    theta = pol._theta.copy()
    with pytest.raises(InvalidRewardError):
        pol.update(np.array([0.1, 0.2]), 0, reward)  # type: ignore[arg-type]
    np.testing.assert_array_equal(pol._theta, theta)


def test_mabwiser_peer_plays_valid_arms() -> None:
    env = DriftingBandit(d=3, k=3, horizon=120, seed=0)
    run = run_bandit(env, MabwiserPolicy(3, 3, batch=40))
    assert run.arms.min() >= 0
    assert run.arms.max() <= 2
    assert run.policy.startswith("mabwiser")
