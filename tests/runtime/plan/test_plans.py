"""Planners suggest; the runtime validates, gates, runs on the critical-path scheduler, learns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import Coordinator, EventBus, EventType
from coreason_runtime._exceptions import DAGCycleError, InvalidDAGError
from coreason_runtime.events import EstimateUpdated, WhatIfDecided
from coreason_runtime.plan import (
    CodePlanner,
    EstimateBook,
    LLMPlanner,
    PersonPlanner,
    PlanRunner,
    Subgoal,
    as_proposal,
)
from coreason_runtime.sched import CriticalPathPolicy, HintProbe, TaskView
from coreason_runtime.tensor import ScriptedTier

DIAMOND = {
    "goal": "(2 + 3) * (2 + 3) + 1",
    "subgoals": [
        {"id": "a", "kind": "add", "inputs": {"x": 2, "y": 3}},
        {"id": "b", "kind": "square", "deps": ["a"]},
        {"id": "c", "kind": "inc", "deps": ["b"]},
    ],
}


def _add(s: Subgoal) -> int:
    return int(s.inputs["x"]) + int(s.inputs["y"])


def _square(s: Subgoal) -> int:
    (v,) = s.needs.values()
    return int(v) ** 2


def _inc(s: Subgoal) -> int:
    (v,) = s.needs.values()
    return int(v) + 1


@pytest.fixture
def runner(bus: EventBus) -> PlanRunner:
    r = PlanRunner(bus, cores=2)
    r.register("add", _add, eta=0.01)
    r.register("square", _square, eta=0.01)
    r.register("inc", _inc, eta=0.01)
    return r


def test_a_code_planners_dag_runs_with_values_flowing_along_it(runner: PlanRunner) -> None:
    planner = CodePlanner(lambda goal, kinds: DIAMOND)
    res = runner.run(planner, "arithmetic")
    assert res.status == "succeeded"
    assert res.values == {"a": 5, "b": 25, "c": 26}
    assert res.dag is not None and set(res.dag.tasks) == {"a", "b", "c"}


def test_a_person_planner_takes_json(runner: PlanRunner) -> None:
    import json

    res = runner.run(PersonPlanner(json.dumps(DIAMOND)))
    assert res.values["c"] == 26


@pytest.mark.parametrize(
    ("plan", "error", "match"),
    [
        ({"subgoals": [{"id": "a", "kind": "divide"}]}, InvalidDAGError, "unknown kind"),
        (
            {
                "subgoals": [
                    {"id": "a", "kind": "add", "deps": ["b"]},
                    {"id": "b", "kind": "add", "deps": ["a"]},
                ]
            },
            DAGCycleError,
            "cycle",
        ),
        ({"subgoals": [{"id": "a", "kind": "add", "priority": 99}]}, InvalidDAGError, "priority"),
        (
            {"subgoals": [{"id": "a", "kind": "add", "max_attempts": 50}]},
            InvalidDAGError,
            "max_attempts",
        ),
        (
            {"subgoals": [{"id": "a", "kind": "add"}], "skip_gates": True},
            InvalidDAGError,
            "skip_gates",
        ),
    ],
)
def test_an_invalid_plan_is_refused_before_anything_runs(
    runner: PlanRunner, plan: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        runner.run(plan)


# --- a plan cannot overrule a gate ---------------------------------------------------------


def test_a_plan_cannot_talk_its_way_past_the_what_if_gate(bus: EventBus) -> None:
    ran: list[str] = []
    runner = PlanRunner(bus, cores=2, lam=1e-3)
    runner.register("cheap", lambda s: ran.append(s.id) or 1, eta=0.01)
    # a costly simulation that has failed every time it ran (the runtime's history says so)
    runner.register("simulate", lambda s: ran.append(s.id) or 1, eta=0.01, cost=2000.0)
    for _ in range(5):
        runner.book.observe("simulate", 1.0, 2, succeeded=False)
    plan = {
        "subgoals": [
            {"id": "prep", "kind": "cheap"},
            # the plan swears this will surely succeed, at once
            {"id": "sim", "kind": "simulate", "deps": ["prep"], "p_succ": 1.0, "eta": 0.0},
            {"id": "report", "kind": "cheap", "deps": ["sim"]},
        ]
    }
    res = runner.run(plan)
    assert ran == ["prep"]  # the simulation and what needs it never ran
    assert res.status == "refused"
    assert res.refused["sim"].startswith("what-if gate: gain/cost")
    assert res.refused["report"] == "depends on refused subgoal 'sim'"
    assert res.estimates["sim"]["source"] == "history" and res.estimates["sim"]["p_succ"] < 0.2
    (event,) = bus.history([EventType.WHATIF_REFUSED])
    assert isinstance(event.data, WhatIfDecided) and event.data.name == "subgoal sim"
    assert event.source == "plan.gate"


def test_a_plan_cannot_raise_a_kinds_wall_budget(bus: EventBus) -> None:
    runner = PlanRunner(bus, cores=1)

    def slow(s: Subgoal) -> int:
        for _ in range(200):
            time.sleep(0.01)
            s.checkpoint()
        return 1

    runner.register("slow", slow, max_wall_s=0.2, max_attempts=1)
    res = runner.run({"subgoals": [{"id": "s", "kind": "slow", "budget_wall_s": 1e6}]})
    assert res.status == "over_budget"
    assert res.dag is not None and res.dag.tasks["s"].run_s < 1.0


def test_a_value_that_fails_verification_never_counts(bus: EventBus) -> None:
    runner = PlanRunner(bus, cores=1)
    runner.register("guess", lambda s: 41, verify=lambda v: v == 42, max_attempts=2)
    res = runner.run({"subgoals": [{"id": "g", "kind": "guess", "p_succ": 1.0}]})
    assert res.status == "failed" and "g" not in res.values
    assert res.dag is not None and res.dag.tasks["g"].attempts == 2
    assert "failed verification" in (res.dag.tasks["g"].error or "")


# --- estimates, probes, reuse --------------------------------------------------------------


def test_eta_and_p_succ_are_learned_from_history_and_kept(tmp_path: Path, bus: EventBus) -> None:
    book = EstimateBook(tmp_path / "estimates.json")
    runner = PlanRunner(bus, cores=2, book=book)
    runner.register("add", _add, eta=5.0, p_succ=0.5)
    for _ in range(3):
        runner.run({"subgoals": [{"id": "a", "kind": "add", "inputs": {"x": 1, "y": 2}}]})
    again = EstimateBook(tmp_path / "estimates.json").get("add")
    assert again is not None and again.runs == 3 and again.eta < 1.0
    assert again.p_succ == pytest.approx(4 / 5)  # 3 successes in 3 attempts, one of each prior
    dag, _, estimates = runner.validate(
        as_proposal({"subgoals": [{"id": "a", "kind": "add", "eta": 99.0}]})
    )
    assert estimates["a"]["source"] == "history" and dag.tasks[0].eta == again.eta


def test_a_probe_runs_on_the_first_sight_of_a_kind_only(bus: EventBus) -> None:
    calls: list[str] = []

    def hint(task: object) -> float:
        calls.append("probe")
        return 0.2

    runner = PlanRunner(bus, cores=2)
    runner.register("prove", lambda s: True, probe=HintProbe(hint, weight=50.0), p_succ=0.9)
    plan = {"subgoals": [{"id": "p1", "kind": "prove"}, {"id": "p2", "kind": "prove"}]}
    runner.run(plan)
    runner.run(plan)
    assert calls == ["probe"]
    (event,) = bus.history([EventType.ESTIMATE_UPDATED])
    assert isinstance(event.data, EstimateUpdated) and event.data.by == "probe:HintProbe"
    assert event.data.p_succ < 0.5


def test_reuse_ranks_a_subgoal_up_by_the_cache_hit_ratio() -> None:
    views = [
        TaskView(id="a", deps=[], eta=1.0, p_succ=1.0, attempts_left=1),
        TaskView(id="b", deps=[], eta=1.2, p_succ=1.0, attempts_left=1),
    ]
    plain = CriticalPathPolicy().priorities(views)
    assert plain["b"] > plain["a"]
    views[0].reuse = 0.5
    boosted = CriticalPathPolicy().priorities(views)
    assert boosted["a"] == pytest.approx(1.5) and boosted["a"] > boosted["b"]


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator()
    runtime.budgets.set("wf", ceiling=None)
    yield runtime
    runtime.close()


def test_a_cacheable_subgoal_is_reused_verified_and_its_kind_ranked_up(rt: Coordinator) -> None:
    calls: list[int] = []

    def expensive(s: Subgoal) -> int:
        calls.append(1)
        return int(s.inputs["n"]) ** 3

    rt.plans.register("cube", expensive, cacheable=True, verify=lambda v: isinstance(v, int))
    plan = {"subgoals": [{"id": "c", "kind": "cube", "inputs": {"n": 7}}]}
    first = rt.plans.run(plan, workflow_id="wf")
    second = rt.plans.run(plan, workflow_id="wf")
    assert first.values == second.values == {"c": 343}
    assert calls == [1] and second.cache_hits == ["c"]
    dag, _, _ = rt.plans.validate(as_proposal(plan))
    assert dag.tasks[0].meta["reuse"] == rt.cache.hit_ratio("request") > 0


def test_an_llm_planner_asks_the_router_for_a_plan(rt: Coordinator) -> None:
    import json

    answer = {
        "subgoals": [
            {"id": "a", "kind": "add", "deps": [], "inputs": [{"name": "x", "value": "2"}]},
            {"id": "b", "kind": "square", "deps": ["a"], "inputs": [], "eta": 0.5},
        ]
    }
    rt.router.set_tiers([ScriptedTier("local", [json.dumps(answer)])])
    proposal = LLMPlanner(rt.router, workflow_id="wf").propose("arithmetic", ["add", "square"])
    assert [s.id for s in proposal.subgoals] == ["a", "b"]
    assert proposal.subgoals[0].inputs == {"x": "2"} and proposal.subgoals[1].eta == 0.5
    assert rt.budgets.spent("wf") > 0  # the planner's request was paid like any other
