"""A notebook's ``rt.controls`` acts on the worker running its request, through Temporal and Redis.

The worker runs in this process on its own runtime (a tiny random Llama behind the local tier),
joined to the notebook's runtime only by the deployment's Redis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import Coordinator, EventType
from coreason_runtime.models import LoadedModel
from coreason_runtime.scale import ClusterClient, ClusterWorker, cluster_runtime
from coreason_runtime.tensor._local import LocalTier

from tests.runtime.scale._helpers import wait_for

pytestmark = [pytest.mark.temporal, pytest.mark.redis]

READING = {
    "type": "object",
    "properties": {"sensor": {"type": "string", "maxLength": 12}, "level": {"type": "integer"}},
    "required": ["sensor", "level"],
}


@pytest.fixture
def worker(tmp_path: Path, redis_url: str, tiny_model: LoadedModel) -> Iterator[Coordinator]:
    rt = cluster_runtime(redis_url, home=tmp_path / "worker")
    rt.router.set_tiers([LocalTier(tiny_model, bus=rt.bus)])
    rt.router.cache = None
    yield rt
    rt.close()


@pytest.fixture
def notebook(tmp_path: Path, redis_url: str) -> Iterator[Coordinator]:
    rt = cluster_runtime(redis_url, home=tmp_path / "notebook")
    rt.budgets.set("wf", ceiling=None)
    yield rt
    rt.close()


def _serve(temporal_server: Any, redis_url: str, worker: Coordinator) -> Any:
    """Run the worker on the runtime's own loop until the returned ``stop()`` is called."""
    from temporalio.client import Client

    ready, done = threading.Event(), threading.Event()

    async def run() -> None:
        client = await Client.connect(temporal_server.address)
        async with ClusterWorker(client, worker, redis_url=redis_url, name="w1", task_queue="rc"):
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)

    future = worker.submit(run())
    assert ready.wait(60), "the worker did not start"

    def stop() -> None:
        done.set()
        future.result(60)

    return stop


def _seen(rt: Coordinator, kind: EventType, source_prefix: str) -> threading.Event:
    seen = threading.Event()
    rt.bus.subscribe(
        lambda e: seen.set() if (e.source or "").startswith(source_prefix) else None, kind
    )
    return seen


def test_a_notebook_pauses_and_resumes_a_request_decoding_on_a_worker(
    temporal_server: Any, redis_url: str, worker: Coordinator, notebook: Coordinator
) -> None:
    stop = _serve(temporal_server, redis_url, worker)
    client = ClusterClient(
        notebook, temporal=temporal_server.address, redis_url=redis_url, task_queue="rc"
    )
    try:
        tokens = _seen(notebook, EventType.TOKENS, "w1/")
        parked = _seen(notebook, EventType.DECODE_PAUSED, "w1/")
        handle = client.ask(READING, "Report.", workflow_id="wf", max_tokens=60)
        assert tokens.wait(60), "the worker's decode never showed up on the notebook's bus"
        notebook.controls.pause("wf")
        assert parked.wait(10), "the worker's decode did not park"
        assert handle.state()["state"] == "running"
        notebook.controls.resume("wf")
        outcome = handle.result(120)
    finally:
        client.close()
        stop()
    assert outcome.status == "answered" and outcome.worker == "w1"
    assert notebook.budgets.spent("wf") == outcome.cost > 0


def test_a_notebook_aborts_a_remote_request_and_its_lease_is_settled_exactly(
    temporal_server: Any, redis_url: str, worker: Coordinator, notebook: Coordinator
) -> None:
    stop = _serve(temporal_server, redis_url, worker)
    client = ClusterClient(
        notebook, temporal=temporal_server.address, redis_url=redis_url, task_queue="rc"
    )
    try:
        tokens = _seen(notebook, EventType.TOKENS, "w1/")
        handle = client.ask(READING, "Report.", workflow_id="wf", max_tokens=60)
        assert tokens.wait(60)
        notebook.controls.abort("wf")
        outcome = handle.result(120)
    finally:
        client.close()
        stop()
    assert outcome.status == "aborted"
    ledger = notebook.budgets.get("wf")
    assert ledger.reserved == pytest.approx(0, abs=1e-6)
    assert ledger.spent == outcome.cost > 0  # exactly what ran was charged


def test_a_request_taken_after_a_pause_waits_for_the_resume(
    temporal_server: Any, redis_url: str, worker: Coordinator, notebook: Coordinator
) -> None:
    stop = _serve(temporal_server, redis_url, worker)
    client = ClusterClient(
        notebook, temporal=temporal_server.address, redis_url=redis_url, task_queue="rc"
    )
    try:
        notebook.controls.pause("wf")
        started = _seen(notebook, EventType.REQUEST_STARTED, "w1/")
        handle = client.ask(READING, "Report.", workflow_id="wf", max_tokens=20)
        wait_for(lambda: worker.controls.status("wf").waiting == 1, "the request to hold")
        assert not started.is_set(), "a request of a paused workflow started"
        notebook.controls.resume("wf")
        outcome = handle.result(120)
    finally:
        client.close()
        stop()
    assert outcome.status == "answered"
