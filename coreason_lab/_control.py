"""Pause, resume, preempt and abort intents, applied cooperatively at the next checkpoint.

A running request cannot be interrupted from outside its thread without corrupting a ledger,
so control is cooperative: work in a workflow passes through :meth:`Controls.checkpoint` at
every metered token (see :class:`GatedMeter`), at every decoder-layer boundary of the local
model's forward passes (see :class:`~coreason_runtime.models.LayerGate`), and between DAG
steps. A paused workflow blocks
there until resumed; an aborted one raises :class:`WorkflowAborted` there, which the router
treats like a budget refusal (no retry, no escalation) and whose charge so far is settled.
Intents come from magics (``%coreason pause``), dashboard buttons and the ``coreason`` comm,
from any thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coreason_runtime import BudgetExceededError, EventBus, EventType

__all__ = ["INTENTS", "Controls", "GatedMeter", "GatedTier", "WorkflowAborted", "WorkflowControl"]

INTENTS = ("pause", "resume", "abort", "preempt")
CONTROL_SOURCE = "coreason_lab.controls"


class WorkflowAborted(BudgetExceededError):
    """The workflow was aborted by its operator.

    A subclass of :class:`BudgetExceededError` on purpose: an abort withdraws the budget, so it
    must bypass every retry and escalation exactly as a crossed ceiling does.
    """


@dataclass
class WorkflowControl:
    """The control state of one workflow: ``running``, ``paused``, ``preempted``, ``aborted``."""

    workflow_id: str
    state: str = "running"
    _go: threading.Event = field(default_factory=threading.Event, repr=False)
    waiting: int = 0
    tokens_out: int = 0
    changed_at: float = 0.0
    blocked_at: float | None = None

    def __post_init__(self) -> None:
        self._go.set()

    @property
    def paused(self) -> bool:
        return self.state in ("paused", "preempted")

    @property
    def aborted(self) -> bool:
        return self.state == "aborted"


class Controls:
    """Per-workflow gates shared by every request, run and view of one runtime.

    Parameters
    ----------
    bus:
        Where state changes are announced (``workflow.paused``, ``workflow.resumed``,
        ``workflow.preempted``, ``workflow.aborted``, each a ``WorkflowControlChanged``), so
        views and the side panel see them. ``origin`` (magic, dashboard, comm …) goes into the
        event's source, ``reason`` into its payload.
    """

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._flows: dict[str, WorkflowControl] = {}
        self.listeners: list[Callable[[WorkflowControl], None]] = []

    def get(self, workflow_id: str) -> WorkflowControl:
        with self._lock:
            ctl = self._flows.get(workflow_id)
            if ctl is None:
                ctl = self._flows[workflow_id] = WorkflowControl(workflow_id)
            return ctl

    def workflows(self) -> list[WorkflowControl]:
        with self._lock:
            return list(self._flows.values())

    def state(self, workflow_id: str) -> str:
        with self._lock:
            ctl = self._flows.get(workflow_id)
        return ctl.state if ctl is not None else "running"

    # --- intents ------------------------------------------------------------------------------

    def apply(
        self, intent: str, workflow_id: str, *, origin: str | None = None, reason: str | None = None
    ) -> WorkflowControl:
        """Apply one of :data:`INTENTS`; unknown intents raise ``ValueError``."""
        handlers = {
            "pause": self.pause,
            "resume": self.resume,
            "abort": self.abort,
            "preempt": self.preempt,
        }
        if intent not in handlers:
            msg = f"unknown intent {intent!r}; expected one of {', '.join(INTENTS)}"
            raise ValueError(msg)
        return handlers[intent](workflow_id, origin=origin, reason=reason)

    def pause(
        self, workflow_id: str, *, origin: str | None = None, reason: str | None = None
    ) -> WorkflowControl:
        """Block the workflow at its next checkpoint until :meth:`resume`."""
        return self._set(workflow_id, "paused", EventType.WORKFLOW_PAUSED, origin, reason)

    def preempt(
        self, workflow_id: str, *, origin: str | None = None, reason: str | None = None
    ) -> WorkflowControl:
        """Like :meth:`pause`, but announced as a preemption."""
        return self._set(workflow_id, "preempted", EventType.WORKFLOW_PREEMPTED, origin, reason)

    def resume(
        self, workflow_id: str, *, origin: str | None = None, reason: str | None = None
    ) -> WorkflowControl:
        """Let a paused or preempted workflow go on."""
        return self._set(workflow_id, "running", EventType.WORKFLOW_RESUMED, origin, reason)

    def abort(
        self, workflow_id: str, *, origin: str | None = None, reason: str | None = None
    ) -> WorkflowControl:
        """Make the workflow's next checkpoint raise :class:`WorkflowAborted`."""
        return self._set(workflow_id, "aborted", EventType.WORKFLOW_ABORTED, origin, reason)

    def clear(self, workflow_id: str) -> None:
        """Forget an aborted (or any) state: the next request in this workflow runs normally."""
        with self._lock:
            ctl = self._flows.pop(workflow_id, None)
        if ctl is not None:
            ctl._go.set()

    def _set(
        self,
        workflow_id: str,
        state: str,
        kind: EventType,
        origin: str | None,
        reason: str | None,
    ) -> WorkflowControl:
        ctl = self.get(workflow_id)
        with self._lock:
            previous = ctl.state
            ctl.state = state
            ctl.changed_at = time.time()
            ctl.blocked_at = None
            if ctl.paused:
                ctl._go.clear()
            else:
                ctl._go.set()  # resume and abort both wake whoever waits at the gate
        if previous != state:
            self._bus.emit(
                kind,
                workflow_id=workflow_id,
                source=CONTROL_SOURCE if origin is None else f"{CONTROL_SOURCE}:{origin}",
                state=state,
                previous=previous,
                reason=reason,
            )
            for listener in list(self.listeners):
                listener(ctl)
        return ctl

    # --- the gate -----------------------------------------------------------------------------

    def checkpoint(self, workflow_id: str | None) -> None:
        """Return at once if the workflow runs; block while paused; raise if aborted.

        Raises
        ------
        WorkflowAborted
            The operator aborted this workflow.
        """
        if workflow_id is None:
            return
        with self._lock:
            ctl = self._flows.get(workflow_id)
        if ctl is None:
            return
        if ctl.paused:
            if ctl.blocked_at is None:
                ctl.blocked_at = time.time()  # when the work really stopped (pause latency)
            ctl.waiting += 1
            try:
                while ctl.paused:
                    ctl._go.wait(0.5)
            finally:
                ctl.waiting -= 1
        if ctl.aborted:
            msg = f"workflow {workflow_id!r} was aborted by its operator"
            raise WorkflowAborted(msg, workflow_id=workflow_id)


class GatedMeter:
    """A :class:`~coreason_runtime.tensor.Meter` that passes a checkpoint before each charge.

    Tiers charge as tokens are consumed (the local tier per token, a streaming tier per
    chunk), so a pause takes effect within one token and an abort stops the decode there. The
    local tier also calls :meth:`checkpoint` at every decoder-layer boundary of its forward
    passes, so there a pause lands within a layer (a few ms) rather than a token.
    """

    def __init__(self, inner: Any, controls: Controls, workflow_id: str | None) -> None:
        self._inner = inner
        self._controls = controls
        self._workflow_id = workflow_id

    @property
    def max_out(self) -> int:
        return int(self._inner.max_out)

    def checkpoint(self) -> None:
        """Block while the workflow is paused; raise :class:`WorkflowAborted` if aborted."""
        self._controls.checkpoint(self._workflow_id)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self._controls.checkpoint(self._workflow_id)
        self._inner.charge(tokens_in=tokens_in, tokens_out=tokens_out)
        if tokens_out and self._workflow_id is not None:
            self._controls.get(self._workflow_id).tokens_out += tokens_out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GatedTier:
    """Wraps any tier so its meter passes :meth:`Controls.checkpoint` (pause/abort per token)."""

    def __init__(self, inner: Any, controls: Controls) -> None:
        self.inner = inner
        self.name = inner.name
        self._controls = controls
        if hasattr(inner, "steerable"):
            self.steerable = inner.steerable

    def complete(self, request: Any, meter: Any) -> Any:
        workflow_id = getattr(request, "workflow_id", None)
        self._controls.checkpoint(workflow_id)
        return self.inner.complete(request, GatedMeter(meter, self._controls, workflow_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"GatedTier({self.inner!r})"
