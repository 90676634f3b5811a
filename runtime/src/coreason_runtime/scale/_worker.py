"""One worker of a deployment: its runtime, its control bridge, its registry entry, its reaper.

``coreason worker --temporal HOST:7233 --redis URL`` runs :func:`run_worker`. The worker's
ledgers are the deployment's (Redis); its controls are joined to every other member's by a
:class:`ControlBridge`; it announces itself in the registry and beats; and a reaper settles the
reservations of dead workers (at their last checkpoint) every few seconds, so a SIGKILLed
worker's lease never blocks a budget for long.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import ConfigurationError, LedgerBackendError
from coreason_runtime.scale._activities import AskActivities
from coreason_runtime.scale._ceilings import CeilingChanges
from coreason_runtime.scale._control_bridge import ControlBridge
from coreason_runtime.scale._registry import ClusterLiveness, WorkerRegistry
from coreason_runtime.scale._temporal import make_worker
from coreason_runtime.scale._workflow import TASK_QUEUE

if TYPE_CHECKING:
    from temporalio.client import Client

    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.budget import BudgetCage

__all__ = [
    "ClusterWorker",
    "WorkerOptions",
    "cluster_runtime",
    "load_setup",
    "run_worker",
    "use_threads",
    "warm_tiers",
]

logger = logging.getLogger("coreason_runtime.scale")


@dataclass(frozen=True)
class WorkerOptions:
    """How ``coreason worker`` runs (each has a command-line flag)."""

    redis_url: str
    temporal: str = "127.0.0.1:7233"
    deployment: str = "default"
    name: str | None = None
    task_queue: str = TASK_QUEUE
    concurrency: int = 4
    setup: str | None = None
    model: str | None = None
    home: Path | None = None
    reap_every: float = 2.0
    threads: int | None = None
    warm: bool = True


def use_threads(threads: int | None) -> int | None:
    """Give this process's torch ``threads`` compute threads. Workers sharing a machine each
    take a share of its cores: N workers at torch's default (one thread per core, or
    ``OMP_NUM_THREADS``) would run N × cores threads fighting over the same cores. Returns the
    count torch now uses; ``None`` (torch left as it is, not even imported) when ``threads``
    is ``None`` or torch is not installed (a worker without a model).

    Raises
    ------
    ConfigurationError
        ``threads`` is below 1.
    """
    if threads is None:
        return None
    if threads < 1:
        msg = f"--threads must be at least 1, got {threads}"
        raise ConfigurationError(msg)
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return int(torch.get_num_threads())


_WARM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}


def warm_tiers(rt: Coordinator) -> list[str]:
    """Load what the runtime's steerable tiers load on first use (the model, its tokenizer's
    grammar tables, a compiled grammar), so a worker takes no request it would first spend
    seconds loading for; returns the names of the tiers warmed. Black-box tiers load nothing.
    """
    from coreason_runtime.tensor._schema import SchemaSpec
    from coreason_runtime.tensor._types import SteerableTier

    spec = SchemaSpec.from_user(_WARM_SCHEMA)
    warmed = []
    for tier in rt.router.tiers:
        if isinstance(tier, SteerableTier):
            tier.compile(spec)
            warmed.append(tier.name)
    return warmed


def load_setup(spec: str) -> Any:
    """``"package.module:function"`` imported: a function called with the worker's runtime
    before it takes work (to set its tiers, register verifiers ...)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        msg = f"--setup must be 'module:function', got {spec!r}"
        raise ConfigurationError(msg)
    return getattr(importlib.import_module(module), name)


def cluster_runtime(
    redis_url: str,
    deployment: str = "default",
    *,
    model: str | None = None,
    home: Path | None = None,
) -> Coordinator:
    """A runtime whose ledgers and subgoal cache are the deployment's Redis, whose ledgers
    know which owners of reservations are gone from the deployment's worker registry.

    The ledgers and the subgoal cache are shared through ``redis_url``; the KV disk tier is
    shared through a folder, ``$COREASON_KV_DIR`` (``LocalCluster`` gives all its workers one;
    workers on several machines need a shared file system there).
    """
    from coreason_runtime import Coordinator, RuntimeConfig
    from coreason_runtime.budget import BudgetCage
    from coreason_runtime.budget._redis import RedisLedgerBackend

    overrides: dict[str, Any] = {"budget_backend": "redis", "redis_url": redis_url}
    if model:
        overrides["model"] = model
    if home is not None:
        overrides["home"] = home
    rt = Coordinator(RuntimeConfig(**overrides))
    # an engine of the runtime, so that closing the runtime closes its connection
    liveness = rt.engine("cluster_liveness", lambda rt: ClusterLiveness(redis_url, deployment))

    def budgets(rt: Coordinator) -> BudgetCage:
        cage = BudgetCage.for_runtime(rt)  # the cage as configured, on the Redis store
        if isinstance(cage.backend, RedisLedgerBackend):
            cage.backend.owner_gone = liveness  # a worker elsewhere is gone when its beat is
        return cage

    rt.engine("budgets", budgets)
    return rt


class ClusterWorker:
    """A Temporal worker on ``rt``, joined to its deployment (bridge, registry, reaper).

    Use ``async with ClusterWorker(...)`` or :meth:`run` (until :meth:`stop`).
    """

    def __init__(
        self,
        client: Client,
        rt: Coordinator,
        *,
        redis_url: str,
        deployment: str = "default",
        name: str | None = None,
        task_queue: str = TASK_QUEUE,
        concurrency: int = 4,
        reap_every: float = 2.0,
        threads: int | None = None,
    ) -> None:
        self.rt = rt
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.bridge = ControlBridge(
            rt.controls,
            rt.bus,
            redis_url,
            deployment=deployment,
            member=self.name,
            forward_events=True,
        )
        self.ceilings = CeilingChanges(rt.budgets, redis_url, deployment)
        self.activities = AskActivities(
            rt, worker=self.name, bridge=self.bridge, ceilings=self.ceilings
        )
        acts = self.activities
        self.registry = WorkerRegistry(
            redis_url,
            deployment,
            self.name,
            task_queue,
            rt.bus,
            counts=lambda: (acts.running, acts.completed),
            threads=threads,
        )
        self.worker = make_worker(
            client, rt, task_queue, activities=self.activities, concurrency=concurrency
        )
        self.reap_every = reap_every
        self._stop = threading.Event()
        self._stopped = asyncio.Event()
        self._reaper: threading.Thread | None = None

    def _reap(self) -> None:
        while not self._stop.wait(self.reap_every):
            try:
                self.rt.budgets.backend.recover_orphans()
            except LedgerBackendError:
                logger.warning("worker %r: orphan recovery failed; retrying", self.name)

    async def __aenter__(self) -> ClusterWorker:
        self.bridge.start()
        self.registry.start()
        self._reaper = threading.Thread(target=self._reap, name="coreason-reaper", daemon=True)
        self._reaper.start()
        await self.worker.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.worker.__aexit__(*exc)
        finally:
            self._stop.set()
            self.registry.stop()
            self.bridge.close()
            self.ceilings.close()
            if self._reaper is not None:
                self._reaper.join(timeout=5)

    async def run(self) -> None:
        """Work until :meth:`stop` (or SIGTERM / SIGINT when installed by :func:`run_worker`)."""
        async with self:
            await self._stopped.wait()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (from the worker's event loop)."""
        self._stopped.set()


def run_worker(opts: WorkerOptions) -> None:
    """Run one worker until SIGTERM or Ctrl-C (``coreason worker --temporal ... --redis ...``)."""

    threads = use_threads(opts.threads)

    async def main() -> None:
        from temporalio.client import Client

        client = await Client.connect(opts.temporal)
        with cluster_runtime(
            opts.redis_url, opts.deployment, model=opts.model, home=opts.home
        ) as rt:
            if opts.setup:
                load_setup(opts.setup)(rt)
            if opts.warm:  # before joining: a request must not wait for a model to load
                t0 = time.perf_counter()
                warmed = warm_tiers(rt)
                logger.warning("warmed %s in %.1f s", warmed, time.perf_counter() - t0)
            worker = ClusterWorker(
                client,
                rt,
                redis_url=opts.redis_url,
                deployment=opts.deployment,
                name=opts.name,
                task_queue=opts.task_queue,
                concurrency=opts.concurrency,
                reap_every=opts.reap_every,
                threads=threads,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            logger.warning(
                "worker %r on task queue %r at %s (deployment %r, %s torch threads)",
                worker.name,
                opts.task_queue,
                opts.temporal,
                opts.deployment,
                threads,
            )
            await worker.run()

    asyncio.run(main())
