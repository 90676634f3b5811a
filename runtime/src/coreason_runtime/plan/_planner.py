"""Planners only suggest: code, a person in a notebook, or an LLM proposes a subgoal DAG."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coreason_runtime._exceptions import InvalidDAGError
from coreason_runtime.plan._types import PlanProposal, SubgoalProposal

if TYPE_CHECKING:
    from coreason_runtime.tensor import TensorRouter

__all__ = ["CodePlanner", "LLMPlanner", "PersonPlanner", "Planner", "as_proposal"]


class Planner(Protocol):
    """Proposes subgoals for a goal, using only the kinds the runtime offers."""

    name: str

    def propose(self, goal: str, kinds: Sequence[str]) -> PlanProposal: ...


def as_proposal(value: PlanProposal | Mapping[str, Any] | str) -> PlanProposal:
    """A proposal from a model instance, a dict or JSON text.

    Raises
    ------
    InvalidDAGError
        It is not a plan (unknown fields included: a plan has no say beyond its subgoals).
    """
    if isinstance(value, PlanProposal):
        return value
    try:
        if isinstance(value, str):
            return PlanProposal.model_validate_json(value)
        return PlanProposal.model_validate(value)
    except ValidationError as e:
        msg = f"not a plan: {e.errors(include_url=False)}"
        raise InvalidDAGError(msg) from e


class CodePlanner:
    """``fn(goal, kinds)`` returns the plan (a :class:`PlanProposal`, a dict or JSON)."""

    def __init__(self, fn: Callable[[str, Sequence[str]], Any], name: str = "code") -> None:
        self.fn = fn
        self.name = name

    def propose(self, goal: str, kinds: Sequence[str]) -> PlanProposal:
        return as_proposal(self.fn(goal, kinds))


class PersonPlanner:
    """A plan a person wrote (in a notebook cell: a dict, or JSON)."""

    name = "person"

    def __init__(self, plan: PlanProposal | Mapping[str, Any] | str) -> None:
        self.plan = as_proposal(plan)

    def propose(self, goal: str, kinds: Sequence[str]) -> PlanProposal:
        return self.plan


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: str


class _LLMSubgoal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: str
    deps: list[str]
    inputs: list[_Input] = Field(description="name/value pairs; values as text")
    eta: float | None = None
    p_succ: float | None = None


class _LLMPlan(BaseModel):
    """A plan in a form every tier can be held to (OpenAI strict mode has no free-form
    objects, so inputs are name/value pairs)."""

    model_config = ConfigDict(extra="forbid")

    subgoals: list[_LLMSubgoal]


class LLMPlanner:
    """A structured request for a subgoal DAG through the router (so it is budgeted, routed
    and validated like any request); the answer is a :class:`PlanProposal`."""

    name = "llm"

    def __init__(
        self,
        router: TensorRouter,
        *,
        workflow_id: str | None = None,
        max_tokens: int = 512,
        tiers: Sequence[str] | None = None,
    ) -> None:
        self.router = router
        self.workflow_id = workflow_id
        self.max_tokens = max_tokens
        self.tiers = tiers

    def propose(self, goal: str, kinds: Sequence[str]) -> PlanProposal:
        prompt = (
            f"Break this goal into subgoals: {goal}\n"
            f"Each subgoal has an id, a kind (one of {json.dumps(list(kinds))}), the ids it "
            "depends on (deps), its inputs, and your estimate of its seconds (eta) and chance "
            "of success (p_succ)."
        )
        res = self.router.generate(
            _LLMPlan,
            prompt,
            workflow_id=self.workflow_id,
            max_tokens=self.max_tokens,
            tiers=self.tiers,
        )
        plan: _LLMPlan = res.value
        try:
            return PlanProposal(
                goal=goal,
                subgoals=[
                    SubgoalProposal(
                        id=s.id,
                        kind=s.kind,
                        deps=s.deps,
                        inputs={i.name: i.value for i in s.inputs},
                        eta=s.eta,
                        p_succ=s.p_succ,
                    )
                    for s in plan.subgoals
                ],
            )
        except ValidationError as e:
            msg = f"the planner's answer is not a plan: {e.errors(include_url=False)}"
            raise InvalidDAGError(msg) from e
