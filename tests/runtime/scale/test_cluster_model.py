"""A worker process on the real model (SmolLM2): it answers, and a notebook pauses its decode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import Coordinator, EventType
from coreason_runtime.scale import ClusterClient, LocalCluster, cluster_runtime

pytestmark = [
    pytest.mark.model,
    pytest.mark.temporal,
    pytest.mark.redis,
    pytest.mark.timeout(600),
]

DERIVATIVE = {
    "type": "object",
    "properties": {"derivative": {"type": "string"}},
    "required": ["derivative"],
}
STORY = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
    "required": ["title", "story"],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), workers=1, concurrency=2) as c:
        yield c  # no setup: the worker's default cascade, the local model


@pytest.fixture
def client(cluster: LocalCluster, tmp_path: Path) -> Iterator[tuple[Coordinator, ClusterClient]]:
    rt = cluster_runtime(cluster.redis_url, home=tmp_path / "notebook")
    with ClusterClient(rt, temporal=cluster.temporal_address, redis_url=cluster.redis_url) as c:
        yield rt, c
    rt.close()


def test_a_worker_on_the_real_model_answers_and_charges_the_shared_ledger(
    client: tuple[Coordinator, ClusterClient],
) -> None:
    rt, c = client
    rt.budgets.set("model-wf", ceiling=None)
    outcome = c.ask(DERIVATIVE, "d/dx x**3", workflow_id="model-wf", max_tokens=24).result(300)
    assert outcome.status == "answered" and outcome.tier == "local"
    assert isinstance(outcome.value["derivative"], str)
    assert rt.budgets.spent("model-wf") == pytest.approx(outcome.cost)


def test_a_notebook_pauses_the_real_models_decode_on_a_worker_process(
    client: tuple[Coordinator, ClusterClient],
) -> None:
    rt, c = client
    rt.budgets.set("model-pause", ceiling=None)
    tokens, parked = threading.Event(), threading.Event()
    rt.bus.subscribe(
        lambda e: tokens.set() if (e.source or "").startswith("w1/") else None, EventType.TOKENS
    )
    rt.bus.subscribe(
        lambda e: parked.set() if (e.source or "").startswith("w1/") else None,
        EventType.DECODE_PAUSED,
    )
    handle = c.ask(
        STORY, "Tell a short story about a lighthouse.", workflow_id="model-pause", max_tokens=80
    )
    assert tokens.wait(300), "the worker's decode never started"
    rt.controls.pause("model-pause")
    assert parked.wait(30), "the worker's decode did not park"
    rt.controls.resume("model-pause")
    outcome = handle.result(300)
    assert outcome.status == "answered"
    assert rt.budgets.get("model-pause").reserved == pytest.approx(0, abs=1e-6)
