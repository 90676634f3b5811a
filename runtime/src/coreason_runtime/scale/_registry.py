"""Who the workers of a deployment are, which are alive, and what each charged.

Every worker keeps an entry in Redis (name, host, pid, task queue) and a liveness key that
expires unless it beats; it adds every charge it settles to its own tally, so the ledgers can
be checked against what the workers consumed. :class:`ClusterLiveness` tells the ledgers
whose reservations are orphans: a process of this host by pid and start time, a worker of
another host by its liveness key.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import Event, EventType
from coreason_runtime._payloads import BudgetCharged
from coreason_runtime.budget._owners import owner_gone
from coreason_runtime.budget._redis import local_owner_gone
from coreason_runtime.scale._control_bridge import deployment_prefix

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus, Subscription
    from coreason_runtime.budget import ReservationRecord

__all__ = ["ClusterLiveness", "WorkerInfo", "WorkerRegistry", "consumed_by_worker", "workers"]

logger = logging.getLogger("coreason_runtime.scale")


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the deployment's Redis knows it."""

    name: str
    host: str
    pid: int
    task_queue: str
    started: float
    alive: bool
    running: int = 0
    completed: int = 0
    threads: int | None = None


def _client(url: str) -> Any:
    """A Redis client with str replies (Any: redis' stubs cannot tell them from bytes)."""
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)


class WorkerRegistry:
    """This worker's entry in its deployment, kept alive by a beat.

    Parameters
    ----------
    redis_url, deployment:
        The deployment's Redis and name.
    name, task_queue:
        The worker's name and the Temporal task queue it polls.
    bus:
        The worker's bus: each settled charge is tallied, and ``scale.worker`` events say the
        worker joined, is alive (every beat) or left.
    counts:
        ``counts() -> (running, completed)`` requests of this worker.
    every:
        Seconds between beats; the liveness key lives three beats.
    threads:
        The worker's torch compute threads (``None``: torch's default or no torch).
    """

    def __init__(
        self,
        redis_url: str,
        deployment: str,
        name: str,
        task_queue: str,
        bus: EventBus,
        *,
        counts: Callable[[], tuple[int, int]] = lambda: (0, 0),
        every: float = 1.0,
        threads: int | None = None,
    ) -> None:
        import os

        self.name = name
        self.task_queue = task_queue
        self.bus = bus
        self.counts = counts
        self.every = every
        self.threads = threads
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = time.time()
        self.prefix = deployment_prefix(deployment)
        self._r = _client(redis_url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sub: Subscription | None = None
        self.consumed = 0.0

    @property
    def key(self) -> str:
        return f"{self.host}:{self.pid}"

    def start(self) -> WorkerRegistry:
        """Register, start beating and tallying charges."""
        entry = {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "task_queue": self.task_queue,
            "started": self.started,
            "threads": self.threads,
        }
        self._r.hset(f"{self.prefix}:workers", self.key, json.dumps(entry))
        self._sub = self.bus.subscribe(self._tally, EventType.BUDGET_CHARGED)
        self._beat("joined")
        self._thread = threading.Thread(target=self._run, name="coreason-registry", daemon=True)
        self._thread.start()
        return self

    def _tally(self, event: Event) -> None:
        if not isinstance(event.data, BudgetCharged) or event.workflow_id is None:
            return
        self.consumed += event.data.cost
        # the tally is what the ledgers are checked against: it must not be lost to a blip
        self._r.hincrbyfloat(
            f"{self.prefix}:consumed:{self.name}", event.workflow_id, event.data.cost
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._beat("alive")
            except Exception:  # Redis away: the next beat retries; others may think us dead
                logger.warning("worker %r could not beat", self.name, exc_info=True)

    def _beat(self, state: str) -> None:
        running, completed = self.counts()
        self._r.set(
            f"{self.prefix}:alive:{self.key}",
            json.dumps([running, completed]),
            px=int(3000 * self.every),
        )
        self.bus.emit(
            EventType.WORKER_STATUS,
            source="scale",
            worker=self.name,
            state=state,
            host=self.host,
            pid=self.pid,
            task_queue=self.task_queue,
            running=running,
            completed=completed,
            consumed=self.consumed,
        )

    def stop(self) -> None:
        """Leave: the liveness key goes at once (the entry stays, so the ledgers know this
        pid was a worker). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sub is not None:
            self._sub.unsubscribe()
        running, completed = self.counts()
        try:
            self._r.delete(f"{self.prefix}:alive:{self.key}")
        finally:
            self.bus.emit(
                EventType.WORKER_STATUS,
                source="scale",
                worker=self.name,
                state="left",
                host=self.host,
                pid=self.pid,
                task_queue=self.task_queue,
                running=running,
                completed=completed,
                consumed=self.consumed,
            )
            self._r.close()


def workers(redis_url: str, deployment: str = "default") -> list[WorkerInfo]:
    """Every worker that ever joined ``deployment``, alive or not, oldest first."""
    r = _client(redis_url)
    prefix = deployment_prefix(deployment)
    try:
        entries = r.hgetall(f"{prefix}:workers")
        out = []
        for key, raw in entries.items():
            e: dict[str, Any] = json.loads(raw)
            beat = r.get(f"{prefix}:alive:{key}")
            running, completed = json.loads(beat) if beat else (0, 0)
            out.append(
                WorkerInfo(
                    name=e["name"],
                    host=e["host"],
                    pid=int(e["pid"]),
                    task_queue=e["task_queue"],
                    started=float(e["started"]),
                    alive=beat is not None,
                    running=running,
                    completed=completed,
                    threads=e.get("threads"),
                )
            )
        return sorted(out, key=lambda w: w.started)
    finally:
        r.close()


def consumed_by_worker(redis_url: str, deployment: str = "default") -> dict[str, dict[str, float]]:
    """C each worker charged, per ledger workflow: ``{worker: {workflow_id: C}}``."""
    r = _client(redis_url)
    prefix = f"{deployment_prefix(deployment)}:consumed:"
    try:
        return {
            key.removeprefix(prefix): {wf: float(c) for wf, c in r.hgetall(key).items()}
            for key in r.scan_iter(f"{prefix}*")
        }
    finally:
        r.close()


class ClusterLiveness:
    """``owner_gone(record)`` for ledgers shared by a deployment's workers.

    A reservation made on this host is orphaned when its process is gone (pid and start
    time); one made by a worker of another host, when that worker's liveness key expired;
    any other (a notebook elsewhere) after an hour, as the ledger store decides by default.
    """

    def __init__(self, redis_url: str, deployment: str = "default") -> None:
        self.prefix = deployment_prefix(deployment)
        self._r = _client(redis_url)
        self._host = socket.gethostname()

    def __call__(self, record: ReservationRecord) -> bool:
        if record.host == self._host:
            return owner_gone(record.pid, record.created)
        key = f"{record.host}:{record.pid}"
        if self._r.hexists(f"{self.prefix}:workers", key):
            return not self._r.exists(f"{self.prefix}:alive:{key}")
        return local_owner_gone(record)

    def close(self) -> None:
        self._r.close()
