"""Workflow controls: pause, resume, preempt and abort any work of a workflow, from any thread.

The runtime owns the controls (``rt.controls``); magics, dashboards, the side panel, a script,
``coreason serve`` and a Temporal worker only send intents to them. Work in a workflow runs
under a :class:`Ticket` (``with rt.controls.scope(wf) as ticket``) and is reached two ways:

* **push**: what can stop *inside* a step registers with :meth:`Ticket.track`. A decode
  session is told to park, and its forward pass is abandoned at the next decoder-layer
  boundary (the KV cropped back, nothing lost); a DAG run is cancelled on abort.
* **pull**: between steps the work calls :meth:`Ticket.checkpoint`, which returns at once
  while the workflow runs, blocks while it is paused or preempted, and raises
  :class:`WorkflowAbortedError` once it was aborted. A streamed remote answer passes a
  checkpoint at every chunk (:class:`ControlledMeter`).

An abort stops the work that was running when it was given (every ticket opened before it);
work started later runs normally, so the workflow stays usable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import RequestError, WorkflowAbortedError, WorkflowPausedError

if TYPE_CHECKING:
    from coreason_runtime.tensor._types import Meter

__all__ = [
    "INTENTS",
    "ControlState",
    "Controllable",
    "ControlledMeter",
    "Controls",
    "Ticket",
    "WorkflowStatus",
]

logger = logging.getLogger("coreason_runtime.controls")

_WAIT_SLICE_S = 0.1  # a blocked checkpoint wakes this often, so Ctrl-C reaches its thread


class ControlState(StrEnum):
    """What an operator last asked of a workflow."""

    RUNNING = "running"
    PAUSED = "paused"
    PREEMPTED = "preempted"
    ABORTED = "aborted"

    @property
    def holds(self) -> bool:
        """True while work must wait (paused or preempted)."""
        return self in (ControlState.PAUSED, ControlState.PREEMPTED)


INTENTS: dict[str, ControlState] = {
    "pause": ControlState.PAUSED,
    "resume": ControlState.RUNNING,
    "abort": ControlState.ABORTED,
    "preempt": ControlState.PREEMPTED,
}

_EVENTS: dict[ControlState, EventType] = {
    ControlState.PAUSED: EventType.WORKFLOW_PAUSED,
    ControlState.PREEMPTED: EventType.WORKFLOW_PREEMPTED,
    ControlState.RUNNING: EventType.WORKFLOW_RESUMED,
    ControlState.ABORTED: EventType.WORKFLOW_ABORTED,
}


@runtime_checkable
class Controllable(Protocol):
    """Work that reacts to a control change at once (a decode session, a DAG run).

    ``control(state)`` is called on the controlling thread; it must not block: it asks the
    work to stop (it parks or is cancelled at its next safe point) and returns.
    """

    def control(self, state: ControlState) -> None: ...


@dataclass(frozen=True)
class WorkflowStatus:
    """One workflow as the controls see it."""

    workflow_id: str
    state: ControlState
    running: int
    waiting: int
    tokens_out: int
    changed_at: float


class _Flow:
    """The mutable control state of one workflow (guarded by ``Controls._cv``)."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.state = ControlState.RUNNING
        self.abort_epoch = 0
        self.tickets: list[Ticket] = []
        self.waiting = 0
        self.tokens_out = 0
        self.changed_at = time.time()


class Ticket:
    """The control handle of one piece of work in a workflow; get one with :meth:`Controls.scope`.

    A ticket opened before an abort is aborted by it; one opened after is not.
    """

    def __init__(self, controls: Controls, workflow_id: str, epoch: int) -> None:
        self._controls = controls
        self.workflow_id = workflow_id
        self.epoch = epoch
        self._tracked: list[Controllable] = []

    @classmethod
    def detached(cls, workflow_id: str = "detached") -> Ticket:
        """A ticket no operator can reach (a tier called directly, outside any runtime)."""
        return Controls().open(workflow_id)

    @property
    def aborted(self) -> bool:
        """Whether the workflow was aborted after this ticket was opened."""
        return self._controls._aborted(self)

    @property
    def state(self) -> ControlState:
        """The workflow's state as this ticket sees it (ABORTED once an abort reached it)."""
        return ControlState.ABORTED if self.aborted else self._controls.state(self.workflow_id)

    @property
    def held(self) -> bool:
        """Whether a checkpoint would block now (paused or preempted, and not aborted)."""
        return self.state.holds

    def checkpoint(self, timeout: float | None = None) -> None:
        """Return at once while the workflow runs; block while paused; raise once aborted.

        Parameters
        ----------
        timeout:
            The longest to wait while paused (``None``: until resumed or aborted).

        Raises
        ------
        WorkflowAbortedError
            The operator aborted the workflow after this ticket was opened.
        WorkflowPausedError
            Still paused or preempted after ``timeout`` seconds.
        """
        self._controls._checkpoint(self, timeout)

    @contextmanager
    def track(self, work: Controllable) -> Iterator[None]:
        """Let control changes reach ``work`` while the block runs.

        If the workflow is already paused or aborted, ``work`` is told at once.
        """
        state = self._controls._track(self, work)
        try:
            if state is not ControlState.RUNNING:
                work.control(state)
            yield
        finally:
            self._controls._untrack(self, work)

    def count_tokens(self, tokens_out: int) -> None:
        """Add output tokens to the workflow's running count (shown by views)."""
        self._controls._count(self, tokens_out)

    def __repr__(self) -> str:
        return f"<Ticket {self.workflow_id!r} epoch={self.epoch} {self.state.value}>"


class ControlledMeter:
    """A :class:`~coreason_runtime.tensor.Meter` that passes the ticket's checkpoint first.

    Tiers charge as tokens are consumed (a stream per chunk), so a pause holds the stream at
    its next chunk and an abort stops it there; tokens charged are counted for the views.
    """

    def __init__(self, inner: Meter, ticket: Ticket) -> None:
        self._inner = inner
        self._ticket = ticket
        self._counted = 0  # output tokens counted for the views so far

    @property
    def max_out(self) -> int:
        return self._inner.max_out

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        """The inner meter's ``ensure``; a wait for budget room ends when the workflow is
        paused (held at the checkpoint, then waiting again) or aborted (raised)."""

        def stop() -> bool:
            outside = interrupted is not None and interrupted()
            return outside or self._ticket.state is not ControlState.RUNNING

        while not self._inner.ensure(tokens_in, tokens_out, interrupted=stop):
            if interrupted is not None and interrupted():
                return False
            self._ticket.checkpoint()  # blocks while paused; raises once aborted
        return True

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.ensure(tokens_in, tokens_out)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self._ticket.checkpoint()
        self._inner.charge(tokens_in=tokens_in, tokens_out=tokens_out)
        if tokens_out:
            self._counted += tokens_out
            self._ticket.count_tokens(tokens_out)

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        self._ticket.checkpoint()
        self._inner.correct(tokens_in, tokens_out)
        if tokens_out > self._counted:
            self._ticket.count_tokens(tokens_out - self._counted)
            self._counted = tokens_out


class Controls:
    """Per-workflow pause / resume / preempt / abort for everything a runtime runs.

    Parameters
    ----------
    bus:
        Where ``workflow.paused``, ``.resumed``, ``.preempted`` and ``.aborted`` go.
    """

    INTENTS: ClassVar[tuple[str, ...]] = tuple(INTENTS)

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus = bus if bus is not None else EventBus()
        self._cv = threading.Condition()
        self._flows: dict[str, _Flow] = {}

    # --- intents -----------------------------------------------------------------------------

    def pause(self, workflow_id: str, *, reason: str | None = None) -> ControlState:
        """Hold the workflow's work at its next layer boundary, chunk or step until resumed."""
        return self._set(workflow_id, ControlState.PAUSED, reason)

    def preempt(self, workflow_id: str, *, reason: str | None = None) -> ControlState:
        """Like :meth:`pause`, announced as a preemption (to make room for other work)."""
        return self._set(workflow_id, ControlState.PREEMPTED, reason)

    def resume(self, workflow_id: str, *, reason: str | None = None) -> ControlState:
        """Let a paused or preempted workflow go on (and clear a past abort's state)."""
        return self._set(workflow_id, ControlState.RUNNING, reason)

    def abort(self, workflow_id: str, *, reason: str | None = None) -> ControlState:
        """Stop the workflow's running work: it raises :class:`WorkflowAbortedError`.

        Work started after the abort runs normally.
        """
        return self._set(workflow_id, ControlState.ABORTED, reason)

    def apply(self, intent: str, workflow_id: str, *, reason: str | None = None) -> ControlState:
        """One of ``pause``, ``preempt``, ``resume``, ``abort`` by name (magics, comms).

        Raises
        ------
        RequestError
            An unknown intent or an empty workflow id.
        """
        if intent not in INTENTS:
            msg = f"unknown intent {intent!r}; expected one of {', '.join(INTENTS)}"
            raise RequestError(msg)
        return self._set(workflow_id, INTENTS[intent], reason)

    def state(self, workflow_id: str) -> ControlState:
        """What was last asked of ``workflow_id`` (``running`` for one never controlled)."""
        with self._cv:
            flow = self._flows.get(workflow_id)
            return flow.state if flow is not None else ControlState.RUNNING

    def status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's state, running and waiting work, and output tokens so far."""
        with self._cv:
            return self._status(self._flow(workflow_id))

    def workflows(self) -> list[WorkflowStatus]:
        """Every workflow the controls have seen, in first-seen order."""
        with self._cv:
            return [self._status(f) for f in self._flows.values()]

    def wait_stopped(self, workflow_id: str, timeout: float) -> bool:
        """Wait until the work an abort of ``workflow_id`` stopped has ended: every ticket
        opened before the abort closed, so every lease it held is settled. False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            flow = self._flow(workflow_id)
            while any(flow.abort_epoch > t.epoch for t in flow.tickets):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    # --- scopes ------------------------------------------------------------------------------

    @contextmanager
    def scope(self, workflow_id: str) -> Iterator[Ticket]:
        """A :class:`Ticket` for one piece of work in ``workflow_id``, closed on exit."""
        ticket = self.open(workflow_id)
        try:
            yield ticket
        finally:
            self.close(ticket)

    def open(self, workflow_id: str) -> Ticket:
        """Open a ticket (prefer :meth:`scope`); a past abort no longer shows as the state."""
        if not isinstance(workflow_id, str) or not workflow_id:
            msg = f"workflow_id must be a non-empty string, got {workflow_id!r}"
            raise RequestError(msg)
        with self._cv:
            flow = self._flow(workflow_id)
            if flow.state is ControlState.ABORTED and not flow.tickets:
                flow.state = ControlState.RUNNING  # the aborted work is gone; this is new work
            ticket = Ticket(self, workflow_id, flow.abort_epoch)
            flow.tickets.append(ticket)
            return ticket

    def close(self, ticket: Ticket) -> None:
        with self._cv:
            flow = self._flows.get(ticket.workflow_id)
            if flow is not None and ticket in flow.tickets:
                flow.tickets.remove(ticket)
            self._cv.notify_all()

    # --- internals ---------------------------------------------------------------------------

    def _flow(self, workflow_id: str) -> _Flow:
        flow = self._flows.get(workflow_id)
        if flow is None:
            flow = self._flows[workflow_id] = _Flow(workflow_id)
        return flow

    @staticmethod
    def _status(flow: _Flow) -> WorkflowStatus:
        return WorkflowStatus(
            flow.workflow_id,
            flow.state,
            len(flow.tickets),
            flow.waiting,
            flow.tokens_out,
            flow.changed_at,
        )

    def _set(self, workflow_id: str, state: ControlState, reason: str | None) -> ControlState:
        if not isinstance(workflow_id, str) or not workflow_id:
            msg = f"workflow_id must be a non-empty string, got {workflow_id!r}"
            raise RequestError(msg)
        with self._cv:
            flow = self._flow(workflow_id)
            previous = flow.state
            flow.state = state
            flow.changed_at = time.time()
            if state is ControlState.ABORTED:
                flow.abort_epoch += 1
            work = [w for t in flow.tickets for w in t._tracked]
            self._cv.notify_all()
        # tell running work outside the lock: a session parks on its own thread
        if state is not ControlState.RUNNING:
            for item in work:
                item.control(state)
        if previous is not state:
            self.bus.emit(
                _EVENTS[state],
                workflow_id=workflow_id,
                source="controls",
                state=state.value,
                previous=previous.value,
                reason=reason,
            )
        return state

    def _aborted(self, ticket: Ticket) -> bool:
        with self._cv:
            flow = self._flows.get(ticket.workflow_id)
            return flow is not None and flow.abort_epoch > ticket.epoch

    def _checkpoint(self, ticket: Ticket, timeout: float | None = None) -> None:
        with self._cv:
            flow = self._flow(ticket.workflow_id)
            if flow.state.holds and flow.abort_epoch <= ticket.epoch:
                flow.waiting += 1
                logger.info("workflow %r is %s; waiting for a resume", flow.workflow_id, flow.state)
                try:
                    self._hold(flow, ticket, timeout)
                finally:
                    flow.waiting -= 1
            if flow.abort_epoch > ticket.epoch:
                msg = f"workflow {ticket.workflow_id!r} was aborted by its operator"
                raise WorkflowAbortedError(msg, workflow_id=ticket.workflow_id)

    def _hold(self, flow: _Flow, ticket: Ticket, timeout: float | None) -> None:
        """Wait (holding ``_cv``) while ``flow`` is held for ``ticket``, at most ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while flow.state.holds and flow.abort_epoch <= ticket.epoch:
            left = _WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                msg = (
                    f"workflow {flow.workflow_id!r} is still {flow.state.value} after "
                    f"{timeout:g} s; resume it with rt.controls.resume({flow.workflow_id!r}) "
                    "and ask again"
                )
                raise WorkflowPausedError(msg, workflow_id=flow.workflow_id)
            self._cv.wait(min(left, _WAIT_SLICE_S))

    def _track(self, ticket: Ticket, work: Controllable) -> ControlState:
        with self._cv:
            ticket._tracked.append(work)
            flow = self._flow(ticket.workflow_id)
            if flow.abort_epoch > ticket.epoch:
                return ControlState.ABORTED
            return flow.state if flow.state.holds else ControlState.RUNNING

    def _untrack(self, ticket: Ticket, work: Controllable) -> None:
        with self._cv:
            if work in ticket._tracked:
                ticket._tracked.remove(work)

    def _count(self, ticket: Ticket, tokens_out: int) -> None:
        with self._cv:
            self._flow(ticket.workflow_id).tokens_out += tokens_out

    def __repr__(self) -> str:
        with self._cv:
            states = {f.workflow_id: f.state.value for f in self._flows.values()}
        return f"<Controls {states}>"
