"""Payloads of requests running on a cluster of workers: suspension, and the workers."""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = ["RequestContinued", "RequestSuspended", "WorkerStatus"]


class RequestSuspended(EventPayload):
    """``request.suspended``: request ``request_id`` (a Temporal workflow) crossed its
    workflow's ceiling Ω and waits, durably, for a ``raise_ceiling`` / ``top_up`` signal or a
    human ``answer``. ``spent`` and ``ceiling`` are the ledger's when it stopped; ``needed`` is
    what the request asked for when it was refused (``None`` if unknown); ``worker`` ran it."""

    request_id: str
    reason: str
    ceiling: float | None
    spent: float
    needed: float | None = None
    tier: str | None = None
    worker: str | None = None


class RequestContinued(EventPayload):
    """``request.continued``: suspended request ``request_id`` goes on, ``by`` a
    ``raise_ceiling``, a ``top_up`` (the ceiling is now ``ceiling``) or a human ``answer``."""

    request_id: str
    by: str
    ceiling: float | None = None


class WorkerStatus(EventPayload):
    """``scale.worker``: worker ``worker`` (process ``pid`` on ``host``, polling
    ``task_queue``) ``joined``, is ``alive`` (a periodic beat) or ``left``; ``running`` requests
    now, ``completed`` since it started, ``consumed`` C it charged since it started."""

    worker: str
    state: str
    host: str
    pid: int
    task_queue: str
    running: int = 0
    completed: int = 0
    consumed: float = 0.0
