"""The activities a worker runs for :class:`StructuredRequestWorkflow`, on its own runtime.

``coreason.generate`` runs the router under the worker's controls and heartbeats while it
runs, so a worker that dies (SIGKILL, power cut) is noticed within the heartbeat timeout and
the request is retried on another worker; a retry first settles the reservations dead workers
left, at their last checkpoint. A crossed ceiling returns a suspension, a yield returns the
yield, an operator's abort returns ``"aborted"``: only infrastructure failures raise (and
are retried).
"""

from __future__ import annotations

import contextvars
import importlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    EpistemicYieldError,
    LedgerBackendError,
    WorkflowAbortedError,
)
from coreason_runtime.scale._ceilings import CeilingChanges
from coreason_runtime.scale._workflow import (
    AskInput,
    AskOutcome,
    BudgetChange,
    Suspension,
)

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.scale._control_bridge import ControlBridge

__all__ = ["AskActivities", "resolve_schema"]

logger = logging.getLogger("coreason_runtime.scale")

# A request refused at its ceiling while other requests of its workflow hold reservations
# waits (up to _ROOM_WAIT_S) for them to settle and tries again, up to _ROOM_ROUNDS times.
_ROOM_WAIT_S = 120.0
_ROOM_POLL_S = 0.05
_ROOM_ROUNDS = 20


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


@contextmanager
def heartbeating(every: float) -> Iterator[None]:
    """Heartbeat the current activity every ``every`` seconds from a side thread while the
    block runs (the block itself may sit in a decode or a paused checkpoint for long)."""
    context = contextvars.copy_context()  # the activity's context, for the side thread
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                context.run(activity.heartbeat)
            except Exception:  # the server is away: Temporal retries if it stays away
                logger.debug("heartbeat failed", exc_info=True)

    activity.heartbeat()
    thread = threading.Thread(target=beat, name="coreason-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 1.0)


def _infrastructure(e: CoreasonError) -> bool:
    """Failures a retry on this or another worker may cure (the ledger store went away)."""
    return e.retryable


class AskActivities:
    """The activities a worker runs, bound to that worker's runtime.

    Parameters
    ----------
    rt:
        The worker's Coordinator: router, budgets (shared, in Redis) and controls.
    worker:
        This worker's name, reported in outcomes and events.
    bridge:
        The worker's :class:`ControlBridge`, so an intent given before this worker took the
        request (a pause, an abort) reaches it; ``None`` for a worker without one.
    ceilings:
        Where ceiling changes are applied once each (the deployment's lock and record); one
        local to this process when omitted.
    """

    def __init__(
        self,
        rt: Coordinator,
        *,
        worker: str = "worker",
        bridge: ControlBridge | None = None,
        ceilings: CeilingChanges | None = None,
    ) -> None:
        self.rt = rt
        self.worker = worker
        self.bridge = bridge
        self.ceilings = ceilings if ceilings is not None else CeilingChanges(rt.budgets)
        self._lock = threading.Lock()
        self.running = 0
        self.completed = 0

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._lock:
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
                self.completed += 1

    @activity.defn(name="coreason.generate")
    def generate(self, req: AskInput) -> AskOutcome:
        """Run ``req`` on this worker's router; heartbeat while it runs."""
        info = activity.info()
        with self._counted(), heartbeating(max(req.heartbeat_timeout_s / 3.0, 0.2)):
            if info.attempt > 1:  # the last attempt's worker may have died holding a lease
                self.recover()
            if self.bridge is not None:
                if self.bridge.aborted_since(req.workflow_id, info.scheduled_time.timestamp()):
                    msg = f"workflow {req.workflow_id!r} was aborted before this worker ran it"
                    return AskOutcome(status="aborted", error=msg, worker=self.worker)
                self.bridge.sync(req.workflow_id)  # a pause given earlier holds it here
            try:
                return self._generate(req, info.workflow_id or "")
            except CoreasonError as e:
                if _infrastructure(e):
                    raise
                raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from e

    def _generate(self, req: AskInput, request_id: str) -> AskOutcome:
        spent_before: list[dict[str, Any]] = []  # attempts cut off by a ceiling, then retried
        last: BudgetExceededError | None = None
        for _ in range(_ROOM_ROUNDS):
            try:
                res = self.rt.router.generate(
                    resolve_schema(req.schema),
                    req.prompt,
                    workflow_id=req.workflow_id,
                    tiers=req.tiers,
                    max_tokens=req.max_tokens,
                    seed=req.seed,
                    pause_timeout=math.inf,  # the activity heartbeats while it waits
                )
            except EpistemicYieldError as e:
                return self._stopped("yielded", e, spent_before)
            except WorkflowAbortedError as e:
                return self._stopped("aborted", e, spent_before)
            except BudgetExceededError as e:
                last = e
                spent_before += [a.model_dump() for a in e.attempts]
                if not self._room_frees_up(req.workflow_id, e.requested or 0.0):
                    break
                continue
            attempts = spent_before + [a.model_dump() for a in res.attempts]
            return AskOutcome(
                status="answered",
                value=_jsonable(res.value),
                tier=res.tier,
                cost=sum(a["cost"] for a in attempts),
                attempts=attempts,
                worker=self.worker,
            )
        assert last is not None  # the loop ends early only by a refusal
        return self._suspend(req, request_id, last, spent_before)

    def _room_frees_up(self, workflow_id: str, need: float) -> bool:
        """Whether ``need`` fits under the ceiling once the workflow's other requests in flight
        settle (they reserved room they may not use): wait for that, at most a while.

        A refusal while others hold reservations is not yet the ceiling: only when nothing in
        flight can give room back is the request suspended for a human to raise Ω.
        """
        deadline = time.monotonic() + _ROOM_WAIT_S
        while time.monotonic() < deadline:
            ledger = self.rt.budgets.get(workflow_id)
            if ledger.ceiling is None or ledger.remaining >= need:
                return True
            if ledger.reserved <= 1e-9:
                return False  # nothing in flight: the ceiling itself is reached
            time.sleep(_ROOM_POLL_S)
        return False

    def _stopped(
        self, status: str, e: CoreasonError, before: list[dict[str, Any]] | None = None
    ) -> AskOutcome:
        attempts = (before or []) + (
            [] if isinstance(e, BudgetExceededError) else [a.model_dump() for a in e.attempts]
        )
        return AskOutcome(
            status=status,
            cost=sum(a["cost"] for a in attempts),
            attempts=attempts,
            error=e.message,
            worker=self.worker,
        )

    def _suspend(
        self,
        req: AskInput,
        request_id: str,
        e: BudgetExceededError,
        before: list[dict[str, Any]],
    ) -> AskOutcome:
        ledger = self.rt.budgets.get(req.workflow_id)
        suspension = Suspension(
            reason="ceiling",
            ceiling=ledger.ceiling,
            spent=ledger.spent,
            needed=e.requested,
            tier=e.tier,
            worker=self.worker,
        )
        self.rt.bus.emit(
            EventType.REQUEST_SUSPENDED,
            workflow_id=req.workflow_id,
            source="scale",
            request_id=request_id,
            reason=suspension.reason,
            ceiling=suspension.ceiling,
            spent=suspension.spent,
            needed=suspension.needed,
            tier=suspension.tier,
            worker=suspension.worker,
        )
        outcome = self._stopped("suspended", e, before)
        outcome.suspension = suspension
        return outcome

    def recover(self) -> None:
        """Settle the reservations of dead owners (each once, at its last checkpoint)."""
        try:
            self.rt.budgets.backend.recover_orphans()
        except LedgerBackendError:
            logger.warning("orphan recovery failed; the next one will retry", exc_info=True)

    @activity.defn(name="coreason.resolve")
    def resolve(self, req: AskInput, answer: Any) -> AskOutcome:
        """Validate a human's answer against the schema and record it as tier ``"human"``."""
        from coreason_runtime.tensor._schema import SchemaSpec

        spec = SchemaSpec.from_user(resolve_schema(req.schema))
        value = spec.validate_value(answer)
        self.rt.budgets.record(req.workflow_id, "human", note="Temporal: answered by a human")
        self.rt.bus.emit(
            EventType.REQUEST_CONTINUED,
            workflow_id=req.workflow_id,
            source="scale",
            request_id=activity.info().workflow_id,
            by="answer",
        )
        return AskOutcome(
            status="answered", value=_jsonable(value), tier="human", worker=self.worker
        )

    @activity.defn(name="coreason.adjust_ceiling")
    def adjust_ceiling(self, change: BudgetChange) -> None:
        """Apply a ``raise_ceiling`` / ``top_up`` (once); the suspended request goes on."""
        ceiling = self.ceilings.apply(
            change.workflow_id, change.change_id, change.by, change.amount
        )
        self.rt.bus.emit(
            EventType.REQUEST_CONTINUED,
            workflow_id=change.workflow_id,
            source="scale",
            request_id=change.request_id,
            by=change.by,
            ceiling=ceiling,
        )

    @property
    def all(self) -> list[Any]:
        """Every activity, for a Temporal ``Worker``."""
        return [self.generate, self.resolve, self.adjust_ceiling]
