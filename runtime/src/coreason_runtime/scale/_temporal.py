"""Structured requests as Temporal workflows: activities on many workers, humans as signals.

A :class:`StructuredRequestWorkflow` runs the router on whichever worker picks up its
activity; ledgers live in Redis so every worker charges the same budget. A request that
reaches its ceiling is suspended until the ceiling is raised; one every tier failed waits for
a human's ``answer`` signal (see :mod:`coreason_runtime.scale._workflow`).
"""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import TYPE_CHECKING, Any

from coreason_runtime.scale._activities import AskActivities, resolve_schema
from coreason_runtime.scale._workflow import (
    TASK_QUEUE,
    AskInput,
    AskOutcome,
    StructuredRequestWorkflow,
)

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
    "resolve_schema",
    "start_request",
]


def make_worker(
    client: Client,
    rt: Coordinator,
    task_queue: str = TASK_QUEUE,
    *,
    activities: AskActivities | None = None,
    concurrency: int = 4,
) -> Worker:
    """A Temporal worker running the workflow and its activities on ``rt``.

    Parameters
    ----------
    activities:
        The activities bound to this worker (its name, its control bridge); plain ones on
        ``rt`` when omitted.
    concurrency:
        Requests this worker runs at once (they interleave on its decode engine).
    """
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    acts = activities if activities is not None else AskActivities(rt)
    # The sandbox re-imports a workflow's modules for every run; coreason_runtime (the package
    # the workflow's module lives in, with pydantic and the rest behind it) is passed through
    # instead: re-importing it cost seconds per workflow task on a busy machine, long enough
    # to delay heartbeats. The workflow uses only dataclasses and temporalio from it.
    restrictions = SandboxRestrictions.default.with_passthrough_modules("coreason_runtime")
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[StructuredRequestWorkflow],
        workflow_runner=SandboxedWorkflowRunner(restrictions=restrictions),
        activities=acts.all,
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=concurrency),
        max_concurrent_activities=concurrency,
    )


async def start_request(
    client: Client, req: AskInput, *, id: str | None = None, task_queue: str = TASK_QUEUE
) -> WorkflowHandle[Any, AskOutcome]:
    """Start a :class:`StructuredRequestWorkflow`; ``await handle.result()`` for the outcome."""
    return await client.start_workflow(
        StructuredRequestWorkflow.run,
        req,
        id=id or f"coreason-{uuid.uuid4().hex[:12]}",
        task_queue=task_queue,
    )
