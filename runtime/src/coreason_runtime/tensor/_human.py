"""The Oracle Circuit's last step: a human's answer to a yielded request, validated and recorded
as tier ``"human"`` (no tokens: the ledger notes the answer at C 0)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import SchemaCompileError
from coreason_runtime.budget import DEFAULT_WORKFLOW
from coreason_runtime.tensor._schema import SchemaSpec
from coreason_runtime.tensor._types import Attempt, Result

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus
    from coreason_runtime._exceptions import EpistemicYieldError
    from coreason_runtime.budget import BudgetCage

__all__ = ["resolve_yield"]


def resolve_yield(
    budgets: BudgetCage, bus: EventBus, error: EpistemicYieldError, answer: Any
) -> Result[Any]:
    """Validate a human's ``answer`` to a yielded request and record it as tier "human"
    (``TensorRouter.resolve_yield``).

    Raises
    ------
    ValidationFailure
        The answer does not satisfy the schema; nothing is recorded.
    """
    spec = error.spec
    if spec is None:
        if error.schema is None:
            msg = "this EpistemicYieldError carries no schema to validate against"
            raise SchemaCompileError(msg)
        spec = SchemaSpec.from_user(error.schema)
    if isinstance(answer, BaseModel):
        answer = answer.model_dump(mode="json")
    value = spec.validate_value(answer)
    wf = error.workflow_id or DEFAULT_WORKFLOW
    budgets.record(wf, "human", note="Oracle Circuit: answered by a human")
    attempt = Attempt(tier="human", index=1, ok=True, model="human")
    attempts = [*error.attempts, attempt]
    bus.emit(EventType.HUMAN_ANSWERED, workflow_id=wf, source="router", schema_name=spec.name)
    bus.emit(
        EventType.REQUEST_FINISHED,
        workflow_id=wf,
        source="router",
        tier="human",
        cost=sum(a.cost for a in attempts),
        attempts=len(attempts),
    )
    text = value.model_dump_json() if isinstance(value, BaseModel) else str(answer)
    return Result(
        value=value,
        tier="human",
        attempts=attempts,
        cost=sum(a.cost for a in attempts),
        workflow_id=wf,
        text=text,
        model="human",
        schema_key=spec.key,
    )
