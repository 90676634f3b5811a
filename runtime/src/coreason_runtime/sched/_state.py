"""The scheduler's records: what happened to each task and DAG, and its live per-task state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from coreason_runtime._exceptions import SchedulerError, TaskFailedError
from coreason_runtime.sched._critical import Policy
from coreason_runtime.sched._dag import SubgoalDAG, TaskSpec
from coreason_runtime.sched._jobs import Job

__all__ = ["TERMINAL", "Action", "DAGResult", "TaskRecord"]

Action = Callable[[TaskSpec, int], Job]
"""Starts attempt ``n`` (1-based) of a task and returns its running :class:`Job`."""

TERMINAL = ("done", "failed", "aborted")


class TaskRecord(BaseModel):
    """What happened to one task."""

    state: str
    attempts: int = 0
    run_s: float = 0.0
    flops: float = 0.0
    preemptions: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None


class DAGResult(BaseModel):
    """The outcome of one DAG: ``status`` is succeeded, failed, over_budget or cancelled."""

    dag_id: str
    workflow_id: str | None = None
    status: str
    makespan: float
    critical_path: list[str]
    tasks: dict[str, TaskRecord]
    error: str | None = None


@dataclass
class _Task:
    spec: TaskSpec
    order: int
    state: str = "waiting"  # waiting, ready, running, paused, done, failed, aborted
    attempts: int = 0
    job: Job | None = None
    ready_since: float = 0.0
    attempt_run_s: float = 0.0
    attempt_flops: float = 0.0
    last: float = 0.0
    cancelled: bool = False
    rec: TaskRecord = field(default_factory=lambda: TaskRecord(state="waiting"))


@dataclass
class _Dag:
    dag: SubgoalDAG
    actions: Mapping[str, Action]
    policy: Policy
    tasks: dict[str, _Task]
    submitted: float
    future: asyncio.Future[DAGResult]
    path: list[str] = field(default_factory=list)
    status: str | None = None
    error: str | None = None
    error_type: type[SchedulerError] = TaskFailedError
