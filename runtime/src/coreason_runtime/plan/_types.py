"""What a planner proposes, what a registered kind of subgoal is, and what a plan run returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from coreason_runtime.sched import DAGResult, TaskKind

if TYPE_CHECKING:
    from coreason_runtime.sched import PauseGate, Probe, TaskSpec

__all__ = ["KindSpec", "PlanProposal", "PlanResult", "Subgoal", "SubgoalProposal"]


class SubgoalProposal(BaseModel):
    """One subgoal as a planner suggests it. Estimates are suggestions: the runtime's own
    (history, probes) take precedence, and no gate ever reads them."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    kind: str = Field(description="one of the registered kinds of subgoal")
    deps: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict)
    eta: float | None = Field(default=None, ge=0, description="seconds, the planner's guess")
    p_succ: float | None = Field(default=None, ge=0, le=1)
    reusable: bool = False
    budget_wall_s: float | None = Field(default=None, gt=0)


class PlanProposal(BaseModel):
    """A planner's subgoal DAG for a goal."""

    model_config = ConfigDict(extra="forbid")

    goal: str = ""
    subgoals: list[SubgoalProposal] = Field(min_length=1, max_length=200)


@dataclass
class Subgoal:
    """What a kind's action gets: its inputs, its dependencies' values, and the pause gate
    (call :meth:`checkpoint` between steps so the scheduler can preempt it)."""

    id: str
    kind: str
    inputs: dict[str, Any]
    needs: dict[str, Any]
    workflow_id: str | None
    attempt: int
    gate: PauseGate

    def checkpoint(self) -> None:
        self.gate.checkpoint()


@dataclass
class KindSpec:
    """A kind of subgoal the runtime knows how to run, and the limits a plan cannot move.

    ``eta`` / ``p_succ`` are the priors before any history; ``cost`` is one attempt's C (the
    what-if gate weighs it against the chance of success: 0 means ungated);
    ``max_attempts`` and ``max_wall_s`` cap what a plan may ask; ``probe`` (a
    :class:`~coreason_runtime.sched.Probe`, or a factory of one per task) runs on the first
    sight of the kind; ``verify(value)`` must pass for an attempt to count; ``cacheable``
    values go through the subgoal cache (and need ``verify``).
    """

    name: str
    action: Callable[[Subgoal], Any]
    task_kind: TaskKind = TaskKind.SOLVER
    eta: float = 1.0
    p_succ: float = 0.9
    cost: float = 0.0
    max_attempts: int = 2
    max_wall_s: float | None = None
    probe: Probe | Callable[[TaskSpec], Probe] | None = None
    verify: Callable[[Any], bool] | None = None
    cacheable: bool = False


@dataclass
class PlanResult:
    """How a plan ran: ``status`` (succeeded, failed, refused, over_budget, cancelled), the
    values of the subgoals that finished, the subgoals the gate refused (with why), the
    estimates used (and where each came from), and the scheduler's record."""

    status: str
    values: dict[str, Any]
    refused: dict[str, str]
    estimates: dict[str, dict[str, Any]]
    dag: DAGResult | None
    cache_hits: list[str] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        return self.dag.makespan if self.dag is not None else 0.0
