"""GrowingRBFNet: resource-allocating growth under a budget, LMS/RLS updates, pruning."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime.bandit import (
    ContextDimensionError,
    GrowingRBFNet,
    GrowthBudget,
    InvalidArmError,
    InvalidBudgetError,
    InvalidRewardError,
)


def _bump(x: np.ndarray) -> float:
    hill = np.exp(-np.sum((x - 0.3) ** 2) / 0.18)
    pit = np.exp(-np.sum((x + 0.4) ** 2) / 0.1)
    return float(hill - 0.8 * pit)


def _fit(net: GrowingRBFNet, n: int, seed: int = 0) -> float:
    """Full-information regression of arm 0 on a bumpy function; returns the held-out MSE."""
    rng = np.random.default_rng(seed)
    for x in rng.uniform(-1, 1, size=(n, net.d)):
        net.update(x, 0, _bump(x) + rng.normal(0, 0.05))
    test = rng.uniform(-1, 1, size=(300, net.d))
    return float(np.mean([(net.predict(x)[0] - _bump(x)) ** 2 for x in test]))


def test_first_novel_error_grows_a_unit_and_publishes(bus: EventBus) -> None:
    net = GrowingRBFNet(2, 3, GrowthBudget(None, bus=bus))
    net.update(np.array([0.5, 0.5]), 1, 1.0)
    assert net.units == 1
    (event,) = bus.history([EventType.RBF_GROWN])
    assert event.data.units == 1
    assert event.data.arm == 1


def test_new_unit_makes_the_network_reproduce_the_reward_there() -> None:
    net = GrowingRBFNet(2, 3, None)
    x = np.array([0.2, -0.1])
    net.update(x, 2, 0.9)
    assert net.predict(x)[2] == pytest.approx(0.9)


def test_zero_budget_never_adds_a_unit() -> None:
    net = GrowingRBFNet(2, 1, 0)
    _fit(net, 300)
    assert net.units == 0
    assert net.gated > 0
    assert net.budget.refused == net.gated


def test_cap_bounds_the_number_of_units() -> None:
    net = GrowingRBFNet(2, 1, 5, delta_max=0.3, delta_min=0.05)
    _fit(net, 500)
    assert net.units == 5
    assert net.grown == 5


def test_lowering_the_budget_mid_run_stops_growth() -> None:
    budget = GrowthBudget(None)
    net = GrowingRBFNet(2, 1, budget, delta_max=0.3, delta_min=0.05)
    _fit(net, 100, seed=1)
    grown = net.grown
    budget.lower_to(0)
    _fit(net, 400, seed=2)
    assert net.grown == grown


def test_rbf_units_fit_what_the_linear_tail_cannot() -> None:
    linear_only = _fit(GrowingRBFNet(2, 1, 0, gamma=1.0), 1500)
    grown = _fit(
        GrowingRBFNet(2, 1, None, gamma=1.0, delta_max=0.4, delta_min=0.25, err_min=0.05), 1500
    )
    assert grown < 0.3 * linear_only


def test_units_without_data_nearby_are_pruned(bus: EventBus) -> None:
    net = GrowingRBFNet(
        1,
        1,
        GrowthBudget(None, bus=bus),
        gamma=0.98,
        delta_max=0.2,
        delta_min=0.2,
        sigma_max=0.2,
        prune_every=100,
        prune_min_age=100,
    )
    rng = np.random.default_rng(0)
    for x in rng.uniform(-1.0, -0.5, size=(300, 1)):  # left region only
        net.update(x, 0, float(np.sin(6 * x[0])))
    left_units = net.units
    for x in rng.uniform(0.5, 1.0, size=(600, 1)):  # then right region only
        net.update(x, 0, float(np.sin(6 * x[0])))
    assert net.pruned >= left_units
    assert bus.history([EventType.RBF_PRUNED])
    assert (net.centres > 0).all()


def test_pruning_refunds_a_recycling_budget() -> None:
    budget = GrowthBudget(100, recycle=True)
    net = GrowingRBFNet(
        1,
        1,
        budget,
        gamma=0.98,
        delta_max=0.2,
        delta_min=0.2,
        sigma_max=0.2,
        prune_every=100,
        prune_min_age=100,
    )
    rng = np.random.default_rng(0)
    for x in np.r_[rng.uniform(-1, -0.5, 300), rng.uniform(0.5, 1, 600)]:
        net.update(np.array([x]), 0, float(np.sin(6 * x)))
    assert net.pruned > 0  # else remaining == 100 - units would hold without any refund
    assert budget.remaining == 100 - net.units


def test_abrupt_change_triggers_a_reset() -> None:
    net = GrowingRBFNet(2, 1, None)
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):
        for x in rng.uniform(-1, 1, size=(800, 2)):
            net.update(x, 0, sign * _bump(x) + rng.normal(0, 0.05))
        if sign > 0:
            assert net.resets == 0
    assert net.resets >= 1


def test_variance_shrinks_where_an_arm_is_observed() -> None:
    net = GrowingRBFNet(2, 2, None)
    x = np.array([0.1, 0.1])
    before = net.variance(x)
    for _ in range(50):
        net.update(x, 0, 0.5)
    after = net.variance(x)
    assert after[0] < 0.2 * before[0]
    assert after[1] > after[0]


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 1)), np.array([np.nan, 0.0])])
def test_bad_context_is_a_typed_error_and_changes_nothing(bad: np.ndarray) -> None:
    net = GrowingRBFNet(2, 2, None)
    net.update(np.array([0.0, 0.0]), 0, 1.0)
    snapshot = (net.t, net.units, net.weights.copy())
    with pytest.raises(ContextDimensionError):
        net.update(bad, 0, 1.0)
    with pytest.raises(ContextDimensionError):
        net.predict(bad)
    assert (net.t, net.units) == snapshot[:2]
    np.testing.assert_array_equal(net.weights, snapshot[2])


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), "high", None])
def test_non_finite_reward_is_a_typed_error_and_changes_nothing(reward: object) -> None:
    net = GrowingRBFNet(2, 2, None)
    x = np.array([0.3, 0.3])
    net.update(x, 0, 1.0)
    y = net.predict(x)
    with pytest.raises(InvalidRewardError):
        net.update(x, 0, reward)  # type: ignore[arg-type]
    np.testing.assert_array_equal(net.predict(x), y)
    assert net.t == 1


@pytest.mark.parametrize("arm", [-1, 2, 1.0, True])
def test_bad_arm_is_a_typed_error(arm: object) -> None:
    net = GrowingRBFNet(2, 2, None)
    with pytest.raises(InvalidArmError):
        net.update(np.zeros(2), arm, 1.0)  # type: ignore[arg-type]


def test_negative_budget_is_a_typed_error() -> None:
    with pytest.raises(InvalidBudgetError):
        GrowingRBFNet(2, 2, -3)


def test_nonpositive_dimension_is_a_typed_error() -> None:
    with pytest.raises(ContextDimensionError):
        GrowingRBFNet(0, 2)
