"""Scale beyond one machine: Temporal workflows for requests, Redis for shared ledgers/caches.

* requests as Temporal workflows (:class:`StructuredRequestWorkflow`): answered, suspended at
  their ceiling until it is raised, or waiting for a human;
* workers (``coreason worker``, :class:`ClusterWorker`) on a runtime whose ledgers and subgoal
  cache are the deployment's Redis (:func:`cluster_runtime`);
* controls across machines (:class:`ControlBridge`): ``rt.controls.pause(wf)`` anywhere holds
  that workflow's work on every worker;
* a whole deployment on one machine (:class:`LocalCluster`, ``coreason cluster up``) and a
  client for notebooks and scripts (:class:`ClusterClient`).

Needs the ``temporal`` and ``redis`` extras (``pip install 'coreason-runtime[temporal,redis]'``).
"""

from __future__ import annotations

import importlib
from typing import Any

from coreason_runtime._exceptions import MissingExtraError

# public name -> the private module that defines it (imported on first use: temporalio and
# redis are optional)
_HOMES: dict[str, str] = {
    "DEMO_SCHEMA": "_demo",
    "TASK_QUEUE": "_workflow",
    "AskActivities": "_activities",
    "AskInput": "_workflow",
    "AskOutcome": "_workflow",
    "ClusterClient": "_client",
    "ClusterLiveness": "_registry",
    "ClusterWorker": "_worker",
    "ControlBridge": "_control_bridge",
    "LocalCluster": "_cluster",
    "PacedTier": "_demo",
    "RequestHandle": "_client",
    "StructuredRequestWorkflow": "_workflow",
    "Suspension": "_workflow",
    "WorkerInfo": "_registry",
    "WorkerOptions": "_worker",
    "WorkerRegistry": "_registry",
    "cluster_runtime": "_worker",
    "make_worker": "_temporal",
    "run_worker": "_worker",
    "start_request": "_temporal",
    "workers": "_registry",
}

__all__ = sorted(_HOMES, key=lambda n: (not n.isupper(), n))


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(name)
    try:
        module = importlib.import_module(f"coreason_runtime.scale.{home}")
    except ImportError as e:
        missing = getattr(e, "name", "") or ""
        if missing.startswith("temporalio"):
            raise MissingExtraError("temporalio", "temporal") from e
        if missing.startswith("redis"):
            raise MissingExtraError("redis", "redis") from e
        raise
    return getattr(module, name)
