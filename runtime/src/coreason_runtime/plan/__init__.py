"""Planning that only suggests: planners propose subgoal DAGs, the runtime validates and runs."""

from __future__ import annotations

from coreason_runtime.plan._estimates import EstimateBook, KindEstimate
from coreason_runtime.plan._planner import (
    CodePlanner,
    LLMPlanner,
    PersonPlanner,
    Planner,
    as_proposal,
)
from coreason_runtime.plan._runner import PlanRunner
from coreason_runtime.plan._types import (
    KindSpec,
    PlanProposal,
    PlanResult,
    Subgoal,
    SubgoalProposal,
)

__all__ = [
    "CodePlanner",
    "EstimateBook",
    "KindEstimate",
    "KindSpec",
    "LLMPlanner",
    "PersonPlanner",
    "PlanProposal",
    "PlanResult",
    "PlanRunner",
    "Planner",
    "Subgoal",
    "SubgoalProposal",
    "as_proposal",
]
