"""GrowthBudget: the runtime-owned gate every new unit must pass."""

from __future__ import annotations

import math
import threading

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime.bandit import BanditError, GrowthBudget, InvalidBudgetError


def test_grants_until_exhausted_then_refuses() -> None:
    budget = GrowthBudget(2)
    assert [budget.request() for _ in range(4)] == [True, True, False, False]
    assert budget.remaining == 0
    assert (budget.granted, budget.refused) == (2, 2)


def test_uncapped_budget_always_grants_and_counts() -> None:
    budget = GrowthBudget(None)
    assert all(budget.request() for _ in range(50))
    assert budget.remaining == math.inf
    assert budget.granted == 50


def test_refusal_publishes_rbf_gated(bus: EventBus) -> None:
    budget = GrowthBudget(0, bus=bus, name="net-a")
    budget.request(t=7)
    (event,) = bus.history([EventType.RBF_GATED])
    assert event.source == "net-a"
    assert event.data.t == 7
    assert event.data.remaining == 0


def test_negative_limit_is_a_typed_error() -> None:
    with pytest.raises(InvalidBudgetError):
        GrowthBudget(-1)


def test_invalid_budget_error_is_a_bandit_error_and_value_error() -> None:
    assert issubclass(InvalidBudgetError, BanditError)
    assert issubclass(InvalidBudgetError, ValueError)


def test_lowering_by_a_negative_amount_changes_nothing() -> None:
    budget = GrowthBudget(5)
    with pytest.raises(InvalidBudgetError):
        budget.lower(-2)
    assert budget.remaining == 5


def test_lower_never_goes_below_zero() -> None:
    budget = GrowthBudget(3)
    assert budget.lower(10) == 0
    assert budget.request() is False


def test_lower_to_caps_but_never_raises() -> None:
    budget = GrowthBudget(10)
    assert budget.lower_to(4) == 4
    assert budget.lower_to(8) == 4


def test_refund_restores_slots_only_when_recycling() -> None:
    plain, recycling = GrowthBudget(2), GrowthBudget(2, recycle=True)
    for budget in (plain, recycling):
        budget.request()
        budget.request()
        budget.refund(1)
    assert (plain.remaining, recycling.remaining) == (0, 1)


def test_refund_cannot_reopen_growth_the_runtime_closed() -> None:
    budget = GrowthBudget(4, recycle=True)
    budget.request()
    budget.lower_to(0)
    budget.refund(3)
    assert budget.remaining == 0


def test_concurrent_requests_never_overdraw() -> None:
    budget = GrowthBudget(100)
    granted: list[int] = []

    def worker() -> None:
        granted.append(sum(budget.request() for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(granted) == 100
