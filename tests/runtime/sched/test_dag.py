"""The subgoal DAG: JSON in and out, and typed errors for every malformed plan."""

from __future__ import annotations

import pytest
from coreason_runtime import SchedulerError
from coreason_runtime._exceptions import (
    DAGCycleError,
    InvalidDAGError,
    InvalidEstimateError,
    UnknownDependencyError,
)
from coreason_runtime.sched import SubgoalDAG, TaskKind, TaskSpec


def _dag() -> SubgoalDAG:
    return SubgoalDAG(
        id="proof",
        tasks=[
            TaskSpec(id="lemma", kind=TaskKind.DECODE, eta=2.0, p_succ=0.5),
            TaskSpec(id="sim", kind=TaskKind.SIMULATION, eta=1.0, resources={"cpu_cores": 2}),
            TaskSpec(id="qed", kind=TaskKind.SOLVER, deps=["lemma", "sim"], budget={"wall_s": 5}),
        ],
    )


def test_dag_round_trips_through_json() -> None:
    dag = _dag()
    again = SubgoalDAG.from_json(dag.to_json())
    assert again == dag
    assert again.task("sim").resources.cpu_cores == 2


def test_topological_order_puts_dependencies_first() -> None:
    order = _dag().topological_order()
    assert order.index("qed") > order.index("lemma")
    assert order.index("qed") > order.index("sim")


def test_expected_duration_counts_retries_through_p_succ() -> None:
    task = TaskSpec(id="t", eta=2.0, p_succ=0.5, max_attempts=60)
    assert task.expected_duration == pytest.approx(4.0)


def test_expected_duration_is_capped_by_max_attempts() -> None:
    task = TaskSpec(id="t", eta=1.0, p_succ=0.0, max_attempts=3)
    assert task.expected_duration == pytest.approx(3.0)


def test_cycle_raises_cycle_error_naming_the_cycle() -> None:
    with pytest.raises(DAGCycleError) as info:
        SubgoalDAG(
            tasks=[
                TaskSpec(id="a", deps=["c"]),
                TaskSpec(id="b", deps=["a"]),
                TaskSpec(id="c", deps=["b"]),
            ]
        )
    assert set(info.value.cycle) == {"a", "b", "c"}
    assert isinstance(info.value, SchedulerError)


def test_self_loop_is_a_cycle() -> None:
    with pytest.raises(DAGCycleError):
        SubgoalDAG(tasks=[TaskSpec(id="a", deps=["a"])])


def test_unknown_dependency_raises_lookup_error() -> None:
    with pytest.raises(UnknownDependencyError):
        SubgoalDAG(tasks=[TaskSpec(id="a", deps=["ghost"])])


def test_negative_eta_raises_invalid_estimate() -> None:
    with pytest.raises(InvalidEstimateError):
        TaskSpec(id="a", eta=-1.0)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_p_succ_outside_unit_interval_raises(p: float) -> None:
    with pytest.raises(InvalidEstimateError):
        TaskSpec(id="a", p_succ=p)


def test_negative_budget_raises_invalid_estimate() -> None:
    with pytest.raises(InvalidEstimateError):
        TaskSpec(id="a", budget={"wall_s": -2})


def test_duplicate_task_ids_are_rejected() -> None:
    with pytest.raises(InvalidDAGError):
        SubgoalDAG(tasks=[TaskSpec(id="a"), TaskSpec(id="a")])


def test_malformed_json_raises_invalid_dag() -> None:
    with pytest.raises(InvalidDAGError):
        SubgoalDAG.from_json('{"tasks": [{"id": "a", "eta": "soon"}]}')


def test_json_with_negative_eta_raises_invalid_estimate() -> None:
    with pytest.raises(InvalidEstimateError):
        SubgoalDAG.from_json('{"tasks": [{"id": "a", "eta": -3}]}')


def test_assignment_of_bad_estimate_leaves_task_unchanged() -> None:
    task = TaskSpec(id="a", eta=1.0)
    with pytest.raises(InvalidEstimateError):
        task.eta = -5.0
    assert task.eta == 1.0
