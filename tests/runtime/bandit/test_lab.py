"""BanditLab: the runtime owns the growth budgets; runs publish on the runtime's bus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from coreason_runtime import Coordinator, EventBus, EventType
from coreason_runtime.bandit import (
    BanditError,
    BanditLab,
    DriftingBandit,
    RBFPolicy,
    recovery_rounds,
    run_bandit,
)


def test_for_runtime_uses_the_coordinators_bus(home: Path) -> None:
    rt = Coordinator()
    try:
        lab = rt.engine("bandit", BanditLab.for_runtime)
        budget = lab.budget("net", 0)
        budget.request()
        assert lab.bus is rt.bus
        assert rt.bus.history([EventType.RBF_GATED])
    finally:
        rt.close()


def test_runtime_lowering_a_named_budget_stops_a_running_network(bus: EventBus) -> None:
    lab = BanditLab(bus)
    env = DriftingBandit(d=2, k=2, horizon=800, seed=0)
    net = lab.network(2, 2, "net", delta_max=0.4, delta_min=0.2)
    at_lowering: list[int] = []

    def controller(t: int, policy: object) -> None:
        if t == 200:
            lab.lower_to("net", 0)
            at_lowering.append(net.grown)

    run = run_bandit(env, RBFPolicy(net, seed=0), on_round=controller, bus=bus)
    assert net.grown == at_lowering[0] > 0
    assert run.units[200:].max() <= at_lowering[0]
    assert any(e.data.reason == "lowered" for e in bus.history([EventType.RBF_GATED]))


def test_lowering_an_unknown_budget_is_a_bandit_error() -> None:
    with pytest.raises(BanditError):
        BanditLab().lower("nope", 1)


def test_lowering_a_capped_budget_by_n_takes_n_away() -> None:
    lab = BanditLab()
    lab.budget("net", 10)
    assert lab.lower("net", 4) == 6


def test_network_with_an_int_budget_is_capped() -> None:
    lab = BanditLab()
    net = lab.network(2, 2, 3, delta_max=0.3, delta_min=0.05)
    run_bandit(DriftingBandit(d=2, k=2, horizon=400, seed=1), RBFPolicy(net, seed=0))
    assert net.units <= 3
    assert net.budget.remaining == 3 - net.grown


def test_run_publishes_a_bandit_round_every_emit_every(bus: EventBus) -> None:
    lab = BanditLab(bus)
    env = DriftingBandit(d=2, k=2, horizon=300, seed=0)
    lab.run(env, RBFPolicy(lab.network(2, 2), seed=0), emit_every=100)
    events = bus.history([EventType.BANDIT_ROUND])
    assert [e.data.t for e in events] == [100, 200, 300]
    assert all(e.data.mean_regret >= 0 for e in events)


def test_run_regret_is_best_mean_minus_chosen_mean() -> None:
    env = DriftingBandit(d=2, k=3, horizon=200, seed=2)
    run = run_bandit(env, RBFPolicy(BanditLab().network(2, 3), seed=0))
    expected = env.means.max(axis=1) - env.means[np.arange(200), run.arms]
    np.testing.assert_allclose(run.regret, expected)


def test_recovery_counts_rounds_until_regret_is_back_to_its_level() -> None:
    regret = np.full(3000, 0.1)
    regret[1000:1400] = 1.0  # a change at 1000 that takes 400 rounds to absorb
    assert recovery_rounds(regret, [1000], window=1, before=500, slack=0.0) == [400]


def test_recovery_is_the_whole_interval_when_never_recovered() -> None:
    regret = np.r_[np.full(1000, 0.1), np.full(1000, 1.0)]
    assert recovery_rounds(regret, [1000], window=100, before=500) == [1000]


def test_a_network_on_a_named_budget_can_carry_its_own_name(bus: EventBus) -> None:
    lab = BanditLab(bus)
    net = lab.network(2, 2, "shared", name="arm-model")
    net.update(np.array([0.5, 0.5]), 0, 1.0)
    assert net.budget is lab.budgets["shared"]
    assert [e.source for e in bus.history([EventType.RBF_GROWN])] == ["arm-model"]
