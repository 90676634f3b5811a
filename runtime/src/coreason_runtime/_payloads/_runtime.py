"""Payloads of the runtime itself: start and stop, log lines, workflow controls."""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = ["Log", "RuntimeStarted", "RuntimeStopped", "WorkflowControlChanged"]


class RuntimeStarted(EventPayload):
    """``runtime.started``: a Coordinator started with its state in ``home``."""

    home: str


class RuntimeStopped(EventPayload):
    """``runtime.stopped``: the Coordinator closed."""


class Log(EventPayload):
    """``runtime.log``: a line worth showing, e.g. a rate limit honoured (``retry_in``
    seconds before attempt ``attempt``)."""

    message: str
    retry_in: float | None = None
    attempt: int | None = None


class WorkflowControlChanged(EventPayload):
    """``workflow.paused`` / ``.resumed`` / ``.preempted`` / ``.aborted``: a workflow's control
    state went from ``previous`` to ``state`` (``running``, ``paused``, ``preempted``,
    ``aborted``), with the ``reason`` given, if any."""

    state: str
    previous: str
    reason: str | None = None
