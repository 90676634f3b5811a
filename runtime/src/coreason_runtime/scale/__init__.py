"""Scale beyond one machine: Temporal workflows for requests, Redis for shared ledgers/caches.

Needs the ``temporal`` extra (``pip install 'coreason-runtime[temporal]'``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TASK_QUEUE",
    "AskActivities",
    "AskInput",
    "AskOutcome",
    "StructuredRequestWorkflow",
    "make_worker",
    "start_request",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        try:
            from coreason_runtime.scale import _temporal
        except ImportError as e:
            from coreason_runtime._exceptions import MissingExtraError

            raise MissingExtraError("temporalio", "temporal") from e
        return getattr(_temporal, name)
    raise AttributeError(name)
