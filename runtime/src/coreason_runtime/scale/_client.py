"""Ask a deployment's workers from a notebook or a script, and steer what they run.

A :class:`ClusterClient` lives on a runtime (a notebook's ``rt``): requests go to Temporal, the
runtime's ledgers are the deployment's (Redis), and a :class:`ControlBridge` joins its controls
to the workers', so ``rt.controls.pause(wf)`` holds that workflow's decodes on every worker
and the workers' events (decodes, charges, suspensions, worker beats) arrive on ``rt.bus``,
where the dashboard shows them. Calls are synchronous: Temporal's client runs on the
runtime's own event loop, so they work in a notebook cell (which has a loop of its own).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from coreason_runtime.scale._control_bridge import ControlBridge
from coreason_runtime.scale._registry import WorkerInfo, consumed_by_worker, workers
from coreason_runtime.scale._temporal import start_request
from coreason_runtime.scale._workflow import TASK_QUEUE, AskInput, AskOutcome

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from coreason_runtime._coordinator import Coordinator

__all__ = ["ClusterClient", "RequestHandle"]


class RequestHandle:
    """One request running on the cluster (a Temporal workflow)."""

    def __init__(self, client: ClusterClient, handle: WorkflowHandle[Any, AskOutcome]) -> None:
        self._client = client
        self._handle = handle

    @property
    def id(self) -> str:
        return self._handle.id

    def result(self, timeout: float | None = None) -> AskOutcome:
        """Wait for the outcome (answered, or aborted)."""
        outcome: AskOutcome = self._client._run(self._handle.result(), timeout)
        return outcome

    def state(self) -> dict[str, Any]:
        """``state`` (running, suspended, waiting_for_human, answered, aborted), the
        suspension (ledger and need) if suspended, the last refused answer, C so far."""
        state: dict[str, Any] = self._client._run(self._handle.query("state"))
        return state

    def raise_ceiling(self, ceiling: float) -> None:
        """Raise the request's workflow ceiling Ω to ``ceiling``; a suspended request goes on."""
        self._client._run(self._handle.signal("raise_ceiling", ceiling))

    def top_up(self, amount: float) -> None:
        """Add ``amount`` to the workflow's ceiling Ω; a suspended request goes on."""
        self._client._run(self._handle.signal("top_up", amount))

    def answer(self, value: Any) -> None:
        """A human's answer to a yielded (or suspended) request, validated by a worker."""
        self._client._run(self._handle.signal("answer", value))

    def __repr__(self) -> str:
        return f"<RequestHandle {self.id!r}>"


class ClusterClient:
    """Requests to a deployment, from ``rt`` (a notebook's or a script's runtime).

    Parameters
    ----------
    rt:
        The local runtime; its budgets should be the deployment's Redis (see
        :func:`~coreason_runtime.scale.cluster_runtime`).
    temporal, redis_url, deployment, task_queue:
        Where the deployment is.
    member:
        This client's name among the deployment's members.
    events:
        Republish the workers' events on ``rt.bus`` (for the dashboard).
    """

    def __init__(
        self,
        rt: Coordinator,
        *,
        temporal: str,
        redis_url: str,
        deployment: str = "default",
        task_queue: str = TASK_QUEUE,
        member: str | None = None,
        events: bool = True,
    ) -> None:
        from temporalio.client import Client

        self.rt = rt
        self.redis_url = redis_url
        self.deployment = deployment
        self.task_queue = task_queue
        self.temporal: Client = rt.submit(Client.connect(temporal)).result(timeout=60)
        self.bridge = ControlBridge(
            rt.controls,
            rt.bus,
            redis_url,
            deployment=deployment,
            member=member or f"client-{uuid.uuid4().hex[:6]}",
            receive_events=events,
        ).start()

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return self.rt.submit(coro).result(timeout)

    def ask(
        self,
        schema: Any,
        prompt: str,
        *,
        workflow_id: str,
        tiers: list[str] | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        id: str | None = None,
        heartbeat_timeout_s: float = 10.0,
    ) -> RequestHandle:
        """Start a request on the cluster; returns at once with its :class:`RequestHandle`.

        ``schema`` is a JSON schema, a pydantic model (sent as its JSON schema: the value
        comes back as a dict) or ``"module:Model"`` importable on the workers.
        """
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        req = AskInput(
            schema=schema,
            prompt=prompt,
            workflow_id=workflow_id,
            tiers=tiers,
            max_tokens=max_tokens,
            seed=seed,
            heartbeat_timeout_s=heartbeat_timeout_s,
        )
        handle = self._run(start_request(self.temporal, req, id=id, task_queue=self.task_queue))
        return RequestHandle(self, handle)

    def request(self, request_id: str) -> RequestHandle:
        """The handle of a request started earlier (by any client)."""
        return RequestHandle(self, self.temporal.get_workflow_handle(request_id))

    def workers(self) -> list[WorkerInfo]:
        """The deployment's workers (alive or not), oldest first."""
        return workers(self.redis_url, self.deployment)

    def consumed(self) -> dict[str, dict[str, float]]:
        """C each worker charged, per ledger workflow."""
        return consumed_by_worker(self.redis_url, self.deployment)

    def close(self) -> None:
        """Stop relaying intents and events (the runtime stays open). Idempotent."""
        self.bridge.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterClient {self.deployment!r} queue={self.task_queue!r}>"
