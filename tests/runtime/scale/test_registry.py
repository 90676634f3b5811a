"""A deployment's workers: who joined, who beats, what each charged, whose leases are orphans."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime.budget import ReservationRecord
from coreason_runtime.events import WorkerStatus
from coreason_runtime.scale import ClusterLiveness, WorkerRegistry, workers
from coreason_runtime.scale._registry import consumed_by_worker

from tests.runtime.scale._helpers import wait_for

pytestmark = pytest.mark.redis


def _record(host: str, pid: int, created: float) -> ReservationRecord:
    return ReservationRecord(
        reservation_id="r",
        workflow_id="wf",
        tier="local",
        granted=10.0,
        pid=pid,
        host=host,
        created=created,
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_worker_joins_beats_tallies_its_charges_and_leaves(redis_url: str) -> None:
    bus = EventBus()
    registry = WorkerRegistry(
        redis_url, "dep", "w1", "q", bus, counts=lambda: (2, 5), every=0.1, threads=2
    ).start()
    bus.emit(
        EventType.BUDGET_CHARGED,
        workflow_id="wf",
        source="budget",
        tier="local",
        tokens_in=1,
        tokens_out=1,
        cost=4.0,
        spent=4.0,
        ceiling=None,
        released=10.0,
    )
    (me,) = workers(redis_url, "dep")
    assert (me.name, me.alive, me.running, me.completed, me.task_queue) == ("w1", True, 2, 5, "q")
    assert me.threads == 2
    assert consumed_by_worker(redis_url, "dep") == {"w1": {"wf": 4.0}}
    wait_for(
        lambda: sum(1 for e in bus.history(["scale"]) if e.data.state == "alive") >= 2,
        "two beats",
    )
    registry.stop()
    assert not workers(redis_url, "dep")[0].alive
    states = [e.data.state for e in bus.history(["scale"]) if isinstance(e.data, WorkerStatus)]
    assert states[0] == "joined" and states[-1] == "left"


def test_liveness_knows_dead_processes_here_and_dead_workers_elsewhere(redis_url: str) -> None:
    import redis

    liveness = ClusterLiveness(redis_url, "dep")
    here = socket.gethostname()
    now = time.time()
    assert liveness(_record(here, _dead_pid(), now))
    assert not liveness(_record(here, os.getpid(), now))
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.hset("coreason:dep:workers", "elsewhere:42", '{"name": "far"}')
    assert liveness(_record("elsewhere", 42, now))  # a worker there, no beat: gone
    r.set("coreason:dep:alive:elsewhere:42", "[0, 0]")
    assert not liveness(_record("elsewhere", 42, now))  # it beats
    assert not liveness(_record("elsewhere", 7, now))  # not a worker: an hour's grace
    assert liveness(_record("elsewhere", 7, now - 7200))
    r.close()
    liveness.close()
