"""Expected critical paths, the policies, allocation with preemption, and the DAG simulator."""

from __future__ import annotations

import random

import pytest
from coreason_runtime.sched import (
    CriticalPathPolicy,
    DaskOrderPolicy,
    FifoPolicy,
    HeftPolicy,
    SubgoalDAG,
    TaskSpec,
    TaskView,
    allocate,
    critical_path,
)
from coreason_runtime.sched._sim import random_layered_dag, realise, simulate


def _views() -> list[TaskView]:
    # a -> c is short but a fails half the time; b -> c is longer on ETA alone
    return [
        TaskView(id="a", deps=[], eta=1.0, p_succ=0.25, attempts_left=100),
        TaskView(id="b", deps=[], eta=2.0, p_succ=1.0, attempts_left=100),
        TaskView(id="c", deps=["a", "b"], eta=1.0, p_succ=1.0, attempts_left=100),
    ]


def test_critical_path_counts_expected_retries() -> None:
    path, length = critical_path(_views())
    assert path == ["a", "c"]
    assert length == pytest.approx(4.0 + 1.0, rel=1e-6)


def test_heft_ranks_on_eta_alone() -> None:
    prios = HeftPolicy().priorities(_views())
    assert prios["b"] > prios["a"]


def test_cpcs_ranks_the_unreliable_task_first() -> None:
    prios = CriticalPathPolicy().priorities(_views())
    assert prios["a"] > prios["b"]


def test_running_time_shortens_the_expected_remaining_path() -> None:
    fresh = TaskView(id="x", deps=[], eta=4.0, p_succ=1.0, attempts_left=1)
    halfway = TaskView(id="x", deps=[], eta=4.0, p_succ=1.0, attempts_left=1, elapsed=2.0)
    assert halfway.expected_remaining() == pytest.approx(2.0)
    assert fresh.expected_remaining() == pytest.approx(4.0)


def test_fifo_prefers_the_earliest_ready() -> None:
    views = [
        TaskView(id="late", deps=[], eta=9, p_succ=1, attempts_left=1, ready_since=2.0),
        TaskView(id="early", deps=[], eta=1, p_succ=1, attempts_left=1, ready_since=1.0),
    ]
    prios = FifoPolicy().priorities(views)
    assert prios["early"] > prios["late"]


def test_dask_order_ranks_every_task_and_the_join_after_its_inputs() -> None:
    prios = DaskOrderPolicy().priorities(_views())
    assert set(prios) == {"a", "b", "c"}
    assert prios["c"] < min(prios["a"], prios["b"])  # dask runs c's inputs before c


def test_allocate_preempts_a_clearly_outranked_running_task() -> None:
    views = [
        TaskView(id="low", deps=[], eta=1, p_succ=1, attempts_left=1),
        TaskView(id="high", deps=[], eta=1, p_succ=1, attempts_left=1),
    ]
    chosen = allocate(
        views, {"low": 1.0, "high": 5.0}, cores=1, gpus=0, running=["low"], preemptive=True
    )
    assert chosen == ["high"]


def test_allocate_keeps_the_incumbent_within_hysteresis() -> None:
    views = [
        TaskView(id="low", deps=[], eta=1, p_succ=1, attempts_left=1),
        TaskView(id="high", deps=[], eta=1, p_succ=1, attempts_left=1),
    ]
    chosen = allocate(
        views,
        {"low": 1.0, "high": 1.05},
        cores=1,
        gpus=0,
        running=["low"],
        preemptive=True,
        hysteresis=0.1,
    )
    assert chosen == ["low"]


def test_allocate_without_preemption_never_evicts() -> None:
    views = [
        TaskView(id="low", deps=[], eta=1, p_succ=1, attempts_left=1),
        TaskView(id="high", deps=[], eta=1, p_succ=1, attempts_left=1),
    ]
    chosen = allocate(
        views, {"low": 1.0, "high": 50.0}, cores=1, gpus=0, running=["low"], preemptive=False
    )
    assert chosen == ["low"]


def test_allocate_respects_gpu_capacity() -> None:
    views = [
        TaskView(id="g1", deps=[], eta=1, p_succ=1, attempts_left=1, gpus=1),
        TaskView(id="g2", deps=[], eta=1, p_succ=1, attempts_left=1, gpus=1),
    ]
    chosen = allocate(views, {"g1": 2.0, "g2": 1.0}, cores=4, gpus=1, preemptive=True)
    assert chosen == ["g1"]


def test_simulated_cpcs_beats_fifo_when_the_long_chain_is_listed_last() -> None:
    shorts = [TaskSpec(id=f"s{i}", eta=1.0) for i in range(4)]
    chain = [
        TaskSpec(id="c0", eta=1.0),
        TaskSpec(id="c1", eta=3.0, deps=["c0"]),
        TaskSpec(id="c2", eta=3.0, deps=["c1"]),
    ]
    dag = SubgoalDAG(tasks=[*shorts, *chain])
    real = realise(dag, random.Random(0), noise=0.0)
    fifo = simulate(dag, real, FifoPolicy(), cores=2).makespan
    cpcs = simulate(dag, real, CriticalPathPolicy(), cores=2).makespan
    assert cpcs == pytest.approx(7.0)
    assert fifo > cpcs


def test_simulated_makespan_never_beats_the_work_bound() -> None:
    rng = random.Random(3)
    dag = random_layered_dag(rng, n_min=20, n_max=25)
    real = realise(dag, random.Random(4))
    work = 0.0
    for t in dag.tasks:
        attempts = real.successes[t.id].index(True) + 1
        work += sum(real.durations[t.id][:attempts])
    result = simulate(dag, real, CriticalPathPolicy(), cores=2)
    assert result.makespan >= work / 2 - 1e-9
