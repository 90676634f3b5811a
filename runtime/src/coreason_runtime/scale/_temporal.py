"""Structured requests as Temporal workflows: activities on many workers, humans as signals.

A :class:`StructuredRequestWorkflow` runs the router on whichever worker picks up its
activity; ledgers live in Redis so every worker charges the same budget. When every tier fails,
the activity returns the yield instead of raising, and the workflow *waits* — for hours if need
be, surviving worker and server restarts — until a human sends the ``answer`` signal. The
answer is validated and recorded as tier ``"human"`` by a second activity.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle
    from temporalio.worker import Worker

    from coreason_runtime._coordinator import Coordinator

__all__ = [
    "TASK_QUEUE",
    "AskActivities",
    "AskInput",
    "AskOutcome",
    "StructuredRequestWorkflow",
    "make_worker",
    "start_request",
]

TASK_QUEUE = "coreason"


@dataclass
class AskInput:
    """What a workflow is asked: a JSON schema (or ``"module:Model"``) and a prompt."""

    schema: dict[str, Any] | str
    prompt: str
    workflow_id: str
    tiers: list[str] | None = None
    max_tokens: int | None = None
    seed: int | None = None


@dataclass
class AskOutcome:
    """The answer (or the yield) with its provenance; JSON-safe for Temporal's history."""

    status: str  # "answered" | "yielded"
    value: Any = None
    tier: str | None = None
    cost: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def resolve_schema(schema: dict[str, Any] | str) -> Any:
    """A JSON schema dict as is; ``"package.module:Model"`` imported to its pydantic model."""
    if isinstance(schema, dict):
        return schema
    module, _, name = schema.partition(":")
    if not name:
        msg = f"schema {schema!r} must be a JSON schema dict or 'module:Model'"
        raise ValueError(msg)
    return getattr(importlib.import_module(module), name)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else json.loads(json.dumps(value, default=str))


class AskActivities:
    """The activities a worker runs, bound to that worker's Coordinator."""

    def __init__(self, rt: Coordinator) -> None:
        self.rt = rt

    @activity.defn(name="coreason.generate")
    def generate(self, req: AskInput) -> AskOutcome:
        from coreason_runtime._exceptions import EpistemicYieldError

        try:
            res = self.rt.router.generate(
                resolve_schema(req.schema),
                req.prompt,
                workflow_id=req.workflow_id,
                tiers=req.tiers,
                max_tokens=req.max_tokens,
                seed=req.seed,
            )
        except EpistemicYieldError as e:
            return AskOutcome(
                status="yielded",
                cost=sum(a.cost for a in e.attempts),
                attempts=[a.model_dump() for a in e.attempts],
                error=e.message,
            )
        return AskOutcome(
            status="answered",
            value=_jsonable(res.value),
            tier=res.tier,
            cost=res.cost,
            attempts=[a.model_dump() for a in res.attempts],
        )

    @activity.defn(name="coreason.resolve")
    def resolve(self, req: AskInput, answer: Any) -> AskOutcome:
        from coreason_runtime.tensor._schema import SchemaSpec

        spec = SchemaSpec.from_user(resolve_schema(req.schema))
        value = spec.validate_value(answer)
        self.rt.budgets.record(req.workflow_id, "human", note="Temporal: answered by a human")
        return AskOutcome(status="answered", value=_jsonable(value), tier="human")


@workflow.defn(name="coreason.StructuredRequest")
class StructuredRequestWorkflow:
    """Ask the router; if it yields, wait for a human's ``answer`` signal, then validate it."""

    def __init__(self) -> None:
        self._answers: list[Any] = []
        self._state = "running"
        self._last_error: str | None = None

    @workflow.run
    async def run(self, req: AskInput) -> AskOutcome:
        outcome: AskOutcome = await workflow.execute_activity(
            "coreason.generate",
            req,
            result_type=AskOutcome,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RetryPolicy(
                maximum_attempts=3, non_retryable_error_types=["BudgetExceededError"]
            ),
        )
        if outcome.status == "answered":
            self._state = "answered"
            return outcome
        self._state = "waiting_for_human"
        spent = outcome.cost
        previous = outcome.attempts
        while True:
            await workflow.wait_condition(lambda: bool(self._answers))
            answer = self._answers.pop(0)
            try:
                resolved: AskOutcome = await workflow.execute_activity(
                    "coreason.resolve",
                    args=[req, answer],
                    result_type=AskOutcome,
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
            except Exception as e:  # an invalid answer: say why and keep waiting
                self._last_error = str(getattr(e, "cause", None) or e)
                continue
            self._state = "answered"
            resolved.cost = spent
            resolved.attempts = [*previous, {"tier": "human", "index": 1, "ok": True}]
            return resolved

    @workflow.signal(name="answer")
    def answer(self, value: Any) -> None:
        self._answers.append(value)

    @workflow.query(name="state")
    def state(self) -> dict[str, Any]:
        return {"state": self._state, "last_error": self._last_error}


def make_worker(client: Client, rt: Coordinator, task_queue: str = TASK_QUEUE) -> Worker:
    """A Temporal worker running the workflow and its activities on ``rt``."""
    import concurrent.futures

    from temporalio.worker import Worker

    acts = AskActivities(rt)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[StructuredRequestWorkflow],
        activities=[acts.generate, acts.resolve],
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=4),
    )


async def start_request(
    client: Client, req: AskInput, *, id: str | None = None, task_queue: str = TASK_QUEUE
) -> WorkflowHandle[Any, AskOutcome]:
    """Start a :class:`StructuredRequestWorkflow`; ``await handle.result()`` for the outcome."""
    import uuid

    return await client.start_workflow(
        StructuredRequestWorkflow.run,
        req,
        id=id or f"coreason-{uuid.uuid4().hex[:12]}",
        task_queue=task_queue,
    )
