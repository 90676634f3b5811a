"""The scheduler's records: what happened to each task and DAG, and its live per-task state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from coreason_runtime._exceptions import SchedulerError, TaskBudgetExceededError, TaskFailedError
from coreason_runtime.sched._critical import Policy, TaskView
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

    def account(self, now: float) -> None:
        """Charge a running task the time since the last tick, and its FLOPs so far."""
        if self.state != "running":
            return
        dt = now - self.last
        self.last = now
        self.attempt_run_s += dt
        self.rec.run_s += dt
        reported = self.job.flops_used() if self.job is not None else None
        spec = self.spec
        est = spec.flops * min(self.attempt_run_s / spec.eta, 1.0) if spec.eta > 0 else spec.flops
        delta = (reported if reported is not None else est) - self.attempt_flops
        self.attempt_flops += delta
        self.rec.flops += delta

    def over_budget(self) -> str | None:
        """What the task spent, if it crossed its own budget; else ``None``."""
        b = self.spec.budget
        over = (b.wall_s is not None and self.rec.run_s > b.wall_s) or (
            b.flops is not None and self.rec.flops > b.flops
        )
        if not over:
            return None
        return f"wall {self.rec.run_s:.3f}s / {b.wall_s}s, flops {self.rec.flops:.3g} / {b.flops}"


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

    def promote(self, now: float) -> None:
        """Waiting tasks whose dependencies are all done become ready."""
        if self.status is not None:
            return
        for t in self.tasks.values():
            if t.state == "waiting" and all(self.tasks[x].state == "done" for x in t.spec.deps):
                t.state, t.ready_since = "ready", now

    def check_budget(self, now: float) -> None:
        """End the DAG ``over_budget`` once it crossed its own wall or FLOP budget."""
        b = self.dag.budget
        spent = sum(t.rec.flops for t in self.tasks.values())
        if self.status is None and (
            (b.wall_s is not None and now - self.submitted > b.wall_s)
            or (b.flops is not None and spent > b.flops)
        ):
            self.status = "over_budget"
            wall = now - self.submitted
            self.error = f"DAG {self.dag.id!r} over budget (wall {wall:.3f}s, flops {spent:.3g})"
            self.error_type = TaskBudgetExceededError

    def views(self) -> list[TaskView]:
        """What the policies see of the tasks not yet ended."""
        return [
            TaskView(
                id=tid,
                deps=t.spec.deps,
                eta=t.spec.eta,
                p_succ=t.spec.p_succ,
                attempts_left=t.spec.max_attempts
                - t.attempts
                + (1 if t.state in ("running", "paused") else 0),
                ready_since=t.ready_since,
                elapsed=t.attempt_run_s,
                order=t.order,
                cores=t.spec.resources.cpu_cores,
                gpus=t.spec.resources.gpu,
                reuse=float(t.spec.meta.get("reuse", 0.0)),
            )
            for tid, t in self.tasks.items()
            if t.state not in TERMINAL
        ]

    def result(self, now: float) -> DAGResult:
        """The outcome, once ``status`` is set."""
        assert self.status is not None
        return DAGResult(
            dag_id=self.dag.id,
            workflow_id=self.dag.workflow_id,
            status=self.status,
            makespan=now - self.submitted,
            critical_path=self.path,
            error=self.error,
            tasks={
                tid: t.rec.model_copy(update={"attempts": t.attempts})
                for tid, t in self.tasks.items()
            },
        )
