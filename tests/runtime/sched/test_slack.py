"""CSS: constraints report slacks; the action raising the minimum (lexicographically) is funded."""

from __future__ import annotations

import math
import random

import pint
import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import ConstraintError
from coreason_runtime.sched import (
    DeadlineConstraint,
    SideCondition,
    SlackAction,
    SlackScheduler,
    TypeConstraint,
    UnitConstraint,
)
from coreason_runtime.sched._sim import random_deadline_jobs, simulate_deadlines

ureg = pint.get_application_registry()


def test_unit_constraint_slack_is_relative_to_the_bound_in_its_units() -> None:
    c = UnitConstraint("error", lambda: ureg.Quantity(50, "mm"), "0.1 m")
    assert c.slack() == pytest.approx(0.5)


def test_unit_constraint_with_wrong_dimension_is_violated_outright() -> None:
    c = UnitConstraint("error", lambda: ureg.Quantity(5, "s"), "0.1 m")
    assert c.slack() == -math.inf


def test_unit_constraint_rejects_an_unreadable_bound() -> None:
    with pytest.raises(ConstraintError):
        UnitConstraint("error", lambda: 1, "not a unit at all ###")


def test_type_constraint_holds_only_for_the_type() -> None:
    value: list[object] = [3]
    c = TypeConstraint("int result", lambda: value[0], int)
    assert c.slack() > 0
    value[0] = "three"
    assert c.slack() == -math.inf


def test_deadline_slack_subtracts_now_and_remaining_work() -> None:
    c = DeadlineConstraint("job", deadline=10.0, remaining=lambda: 3.0, clock=lambda: 4.0)
    assert c.slack() == pytest.approx(3.0)


def test_failing_constraint_raises_constraint_error() -> None:
    css = SlackScheduler([SideCondition("boom", lambda: 1 / 0)])
    with pytest.raises(ConstraintError):
        css.slacks()


def test_duplicate_constraint_names_are_rejected() -> None:
    with pytest.raises(ConstraintError):
        SlackScheduler([SideCondition("x", lambda: 1.0), SideCondition("x", lambda: 2.0)])


def _three() -> SlackScheduler:
    return SlackScheduler(
        [
            SideCondition("a", lambda: 0.1),
            SideCondition("b", lambda: 0.5),
            SideCondition("c", lambda: 0.9),
        ]
    )


def test_choose_funds_the_action_raising_the_minimum() -> None:
    css = _three()
    raise_b = SlackAction("raise b", predict=lambda: {"b": 2.0})
    raise_a = SlackAction("raise a", predict=lambda: {"a": 0.3})
    assert css.choose([raise_b, raise_a]) is raise_a


def test_ties_on_the_minimum_break_on_the_next_smallest() -> None:
    css = _three()
    both = SlackAction("a and b", predict=lambda: {"a": 0.6, "b": 0.7})
    only_a = SlackAction("a only", predict=lambda: {"a": 0.6})
    # minimum is 0.6 either way; next smallest is 0.7 vs 0.5
    assert css.choose([only_a, both]) is both


def test_lost_constraints_do_not_capture_the_funding() -> None:
    css = SlackScheduler(
        [SideCondition("hopeless", lambda: -5.0), SideCondition("tight", lambda: 0.1)]
    )
    poke = SlackAction("poke hopeless", predict=lambda: {"hopeless": -5.0, "tight": 0.05})
    save = SlackAction("save tight", predict=lambda: {"tight": 0.4})
    assert css.choose([poke, save]) is save
    assert css.lost == {"hopeless"}


def test_a_violated_constraint_that_an_action_can_raise_is_not_lost() -> None:
    css = SlackScheduler(
        [SideCondition("coarse", lambda: -3.0), SideCondition("fine", lambda: 0.2)]
    )
    refine = SlackAction("refine coarse", predict=lambda: {"coarse": -0.5})
    polish = SlackAction("polish fine", predict=lambda: {"fine": 0.9})
    assert css.choose([polish, refine]) is refine
    assert css.lost == set()


def test_an_action_predicting_an_unknown_constraint_is_refused() -> None:
    css = _three()
    typo = SlackAction("typo", predict=lambda: {"d": 5.0})
    with pytest.raises(ConstraintError, match="unknown constraints"):
        css.choose([typo])


def test_budget_excludes_unaffordable_actions() -> None:
    css = SlackScheduler([SideCondition("a", lambda: 0.0)], budget=1.0)
    pricey = SlackAction("pricey", predict=lambda: {"a": 9.0}, cost=5.0)
    assert css.choose([pricey]) is None


def test_step_publishes_slack_funded_and_runs_the_action() -> None:
    bus = EventBus()
    state = {"h": 0.1}
    css = SlackScheduler([SideCondition("step", lambda: 0.05 - state["h"])], bus=bus)
    halve = SlackAction(
        "halve step",
        predict=lambda: {"step": 0.05 - state["h"] / 2},
        run=lambda: state.update(h=state["h"] / 2),
    )
    final = css.run(lambda: [halve], target=0.0)
    assert final["step"] >= 0
    funded = bus.history([EventType.SLACK_FUNDED])
    assert [e.data.action for e in funded] == ["halve step"]


def test_css_misses_fewer_deadlines_than_edf_under_overload() -> None:
    misses = {"edf": 0, "css": 0}
    for seed in range(3):
        jobs = random_deadline_jobs(random.Random(seed), n=30, load=1.5)
        for policy in misses:
            misses[policy] += simulate_deadlines(jobs, policy)
    assert misses["css"] < misses["edf"]
