"""Payloads of scheduling, notebook steps, two-phase tool calls and what-if gates."""

from __future__ import annotations

from typing import Any

from coreason_runtime._payloads._base import EventPayload

__all__ = [
    "CriticalPath",
    "DagSubmitted",
    "EstimateUpdated",
    "ScheduleDecided",
    "SlackFunded",
    "StepDeclared",
    "StepForced",
    "StepInvariantViolated",
    "TaskAborted",
    "TaskFailed",
    "TaskFinished",
    "TaskPreempted",
    "TaskResumed",
    "TaskStarted",
    "TxnAborted",
    "TxnCommitted",
    "TxnPrepared",
    "TxnRecovered",
    "WhatIfDecided",
]


# --- the scheduler: DAGs and tasks ---------------------------------------------------------


class DagSubmitted(EventPayload):
    """``sched.dag_submitted``: a DAG was submitted; ``spec`` is the whole ``SubgoalDAG`` as
    JSON (``SubgoalDAG.model_validate(spec)`` gives it back)."""

    dag_id: str
    spec: dict[str, Any]


class EstimateUpdated(EventPayload):
    """``sched.estimate_updated``: a task's t̂ / p_succ changed online (``by`` a probe or a
    caller); the next tick re-plans with them."""

    dag_id: str
    task: str
    eta: float
    p_succ: float
    by: str


class ScheduleDecided(EventPayload):
    """``sched.decided``: one tick's allocation (task keys are ``"<dag id>/<task id>"``)."""

    policy: str
    running: list[str]
    started: list[str]
    preempted: list[str]
    resumed: list[str]


class CriticalPath(EventPayload):
    """``sched.critical_path``: a DAG's critical path changed; ``expected_s`` is its length."""

    dag_id: str
    path: list[str]
    expected_s: float


class TaskStarted(EventPayload):
    """``task.started``: attempt ``attempt`` of a task began (in process ``pid``, if any)."""

    dag_id: str
    task: str
    attempt: int
    pid: int | None
    kind: str


class TaskPreempted(EventPayload):
    """``task.preempted``: the scheduler paused a running task for a more urgent one."""

    dag_id: str
    task: str
    attempt: int
    pid: int | None


class TaskResumed(EventPayload):
    """``task.resumed``: a preempted task runs again."""

    dag_id: str
    task: str
    attempt: int


class TaskFinished(EventPayload):
    """``task.finished``: a task succeeded after ``run_s`` seconds of running (all attempts)."""

    dag_id: str
    task: str
    attempt: int
    run_s: float


class TaskFailed(EventPayload):
    """``task.failed``: an attempt failed; ``will_retry`` says whether another follows."""

    dag_id: str
    task: str
    attempt: int
    error: str
    worker_died: bool
    will_retry: bool


class TaskAborted(EventPayload):
    """``task.aborted``: a task was dropped (its transactions' consumers go with it)."""

    dag_id: str
    task: str
    reason: str


class SlackFunded(EventPayload):
    """``sched.slack_funded``: the slack scheduler paid ``cost`` for ``action``."""

    action: str
    cost: float
    min_slack_before: float
    min_slack_predicted: float
    lost: list[str]
    slacks_before: dict[str, float]


# --- notebook steps (coreason_lab's lazy cells) --------------------------------------------


class StepDeclared(EventPayload):
    """``step.declared``: a notebook step was declared, depending on ``deps``."""

    name: str
    deps: list[str]


class StepForced(EventPayload):
    """``step.forced``: a notebook step ran; ``summary`` is its value's short repr."""

    name: str
    summary: str
    duration_s: float


class StepInvariantViolated(EventPayload):
    """``step.invariant_violated``: a declared notebook invariant does not hold."""

    invariant: str
    detail: str


# --- two-phase tool calls and what-if gates ------------------------------------------------


class TxnPrepared(EventPayload):
    """``txn.prepared``: a tool call was prepared for ``consumers``, nothing run yet."""

    txn_id: str
    tool: str
    est_cost: float
    consumers: list[str]


class TxnCommitted(EventPayload):
    """``txn.committed``: ``phase`` "running" (the run started in ``pid``) or "done" (it
    finished after ``cpu_s`` seconds of CPU)."""

    txn_id: str
    tool: str
    phase: str
    pid: int
    cpu_s: float | None  # None while running


class TxnAborted(EventPayload):
    """``txn.aborted``: a call was aborted (``during_run``: its run was killed) or its run
    ``failed``; ``cpu_s`` is the CPU its run used."""

    txn_id: str
    tool: str
    reason: str
    during_run: bool
    failed: bool
    cpu_s: float


class TxnRecovered(EventPayload):
    """``txn.recovered``: a restart resolved what a dead coordinator left open."""

    aborted: list[str]
    interrupted: list[str]
    completed: list[str]
    killed_pids: list[int]


class WhatIfDecided(EventPayload):
    """``whatif.allowed`` / ``whatif.refused``: a gate's decision on ``name``.

    ``predicted_gain`` / ``predicted_cost`` and ``dry_run_s`` are None when it was refused
    without a dry run (e.g. no memory for it); ``region`` is whatever the caller gated.
    """

    name: str
    allowed: bool
    reason: str
    predicted_gain: float | None
    predicted_cost: float | None
    dry_run_s: float | None
    region: Any
    detail: dict[str, Any]
