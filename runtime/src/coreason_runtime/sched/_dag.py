"""The subgoal DAG: tasks with ETAs, success probabilities, resources and budgets (JSON in/out)."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coreason_runtime._exceptions import (
    DAGCycleError,
    InvalidDAGError,
    InvalidEstimateError,
    UnknownDependencyError,
)

__all__ = ["Budget", "Resources", "SubgoalDAG", "TaskKind", "TaskSpec"]


class TaskKind(str, Enum):  # noqa: UP042 - same style as EventType
    """What a task does; decides which preemption mechanism applies to it."""

    DECODE = "decode"
    SIMULATION = "simulation"
    TOOL = "tool"
    SOLVER = "solver"


def _non_negative(name: str, value: float | None) -> float | None:
    if value is not None and (math.isnan(value) or value < 0):
        msg = f"{name} must be a non-negative number, got {value!r}"
        raise InvalidEstimateError(msg)
    return value


class Resources(BaseModel):
    """What one attempt of a task occupies while it runs."""

    model_config = ConfigDict(extra="forbid")

    cpu_cores: int = 1
    gpu: int = 0

    @field_validator("cpu_cores", "gpu")
    @classmethod
    def _check(cls, v: int) -> int:
        _non_negative("a resource count", v)
        return v


class Budget(BaseModel):
    """Hard limits; a task or DAG that crosses one is stopped, not warned about.

    ``wall_s`` counts seconds the task actually ran (time paused by the scheduler is not
    charged to it); for a DAG it counts seconds since submission. ``flops`` counts estimated
    FLOPs: a job that reports FLOPs is charged what it reports, otherwise the task's
    ``flops`` estimate is charged pro rata of running time over ETA.
    """

    model_config = ConfigDict(extra="forbid")

    wall_s: float | None = None
    flops: float | None = None

    @field_validator("wall_s", "flops")
    @classmethod
    def _check(cls, v: float | None) -> float | None:
        return _non_negative("a budget", v)


class TaskSpec(BaseModel):
    """One subgoal: a decode, simulation, tool call or solver run.

    ``eta`` is t̂ (seconds for one attempt), ``p_succ`` the chance an attempt succeeds; a
    failed attempt is retried up to ``max_attempts`` times. ``flops`` is the estimated FLOPs of
    one attempt. ``deadline`` (seconds after submission) is used by the slack scheduler.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(min_length=1)
    kind: TaskKind = TaskKind.SOLVER
    deps: list[str] = Field(default_factory=list)
    eta: float = 1.0
    p_succ: float = 1.0
    max_attempts: int = 3
    resources: Resources = Field(default_factory=Resources)
    budget: Budget = Field(default_factory=Budget)
    flops: float = 0.0
    deadline: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("eta", "flops")
    @classmethod
    def _check_eta(cls, v: float) -> float:
        if math.isinf(v):
            msg = f"ETA and FLOP estimates must be finite, got {v!r}"
            raise InvalidEstimateError(msg)
        _non_negative("ETA and FLOP estimates", v)
        return v

    @field_validator("p_succ")
    @classmethod
    def _check_p(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:  # NaN fails too
            msg = f"p_succ must lie in [0, 1], got {v!r}"
            raise InvalidEstimateError(msg)
        return v

    @field_validator("max_attempts")
    @classmethod
    def _check_attempts(cls, v: int) -> int:
        if v < 1:
            msg = f"max_attempts must be at least 1, got {v}"
            raise InvalidEstimateError(msg)
        return v

    @property
    def expected_duration(self) -> float:
        """t̂ times the expected number of attempts (t̂/p when retries are unbounded)."""
        return self.eta * expected_attempts(self.p_succ, self.max_attempts)


def expected_attempts(p_succ: float, max_attempts: int) -> float:
    """E[attempts] when each succeeds with ``p_succ``, stopping at ``max_attempts``.

    ``sum_{j<k} (1-p)^j = (1 - (1-p)^k) / p``; equals ``1/p`` as ``k`` grows and ``k`` at p=0.
    """
    if p_succ <= 0.0:
        return float(max_attempts)
    return (1.0 - (1.0 - p_succ) ** max_attempts) / p_succ


class SubgoalDAG(BaseModel):
    """A plan as a DAG of :class:`TaskSpec`; validated for ids, dependencies and cycles."""

    model_config = ConfigDict(extra="forbid")

    id: str = "dag"
    workflow_id: str | None = None
    tasks: list[TaskSpec]
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="after")
    def _check_graph(self) -> SubgoalDAG:
        ids: set[str] = set()
        for t in self.tasks:
            if t.id in ids:
                msg = f"task id {t.id!r} appears twice in DAG {self.id!r}"
                raise InvalidDAGError(msg)
            ids.add(t.id)
        for t in self.tasks:
            for d in t.deps:
                if d not in ids:
                    msg = f"task {t.id!r} depends on unknown task {d!r}"
                    raise UnknownDependencyError(msg)
        cycle = _find_cycle({t.id: list(t.deps) for t in self.tasks})
        if cycle:
            msg = f"DAG {self.id!r} has a cycle: {' -> '.join(cycle)}"
            raise DAGCycleError(msg, cycle=cycle)
        return self

    # --- JSON in and out ---------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes) -> SubgoalDAG:
        """Parse a DAG from JSON; malformed input raises :class:`InvalidDAGError`."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            msg = f"not a valid subgoal DAG: {e.errors(include_url=False)}"
            raise InvalidDAGError(msg) from e

    def to_json(self) -> str:
        return self.model_dump_json()

    # --- graph helpers -----------------------------------------------------------------------

    def task(self, task_id: str) -> TaskSpec:
        for t in self.tasks:
            if t.id == task_id:
                return t
        msg = f"DAG {self.id!r} has no task {task_id!r}"
        raise UnknownDependencyError(msg)

    def successors(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {t.id: [] for t in self.tasks}
        for t in self.tasks:
            for d in t.deps:
                out[d].append(t.id)
        return out

    def topological_order(self) -> list[str]:
        order: list[str] = []
        indeg = {t.id: len(t.deps) for t in self.tasks}
        succ = self.successors()
        ready = [t.id for t in self.tasks if not t.deps]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for s in succ[n]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        return order


def _find_cycle(deps: dict[str, list[str]]) -> list[str]:
    """One cycle as a list of ids (first id repeated at the end), or [] if acyclic."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in deps:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            if i < len(deps[node]):
                stack[-1] = (node, i + 1)
                nxt = deps[node][i]
                if color[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return []
