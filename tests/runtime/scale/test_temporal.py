"""Structured requests as Temporal workflows against a real Temporal dev server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from coreason_runtime import Coordinator, RuntimeConfig
from coreason_runtime.scale import AskInput, make_worker, start_request
from coreason_runtime.tensor import ScriptedTier

pytestmark = [pytest.mark.temporal, pytest.mark.redis]

SCHEMA = {
    "type": "object",
    "properties": {"derivative": {"type": "string"}},
    "required": ["derivative"],
}


@pytest.fixture
def worker_rt(home, redis_url: str) -> Iterator[Coordinator]:
    rt = Coordinator(
        RuntimeConfig(home=home, budget_backend="redis", redis_url=redis_url, oracle=None)
    )
    rt.budgets.set("wf-t", ceiling=5_000)
    yield rt
    rt.close()


def _run(temporal_server, rt: Coordinator, scenario):
    from temporalio.client import Client

    async def main():
        client = await Client.connect(temporal_server.address)
        queue = f"q-{uuid.uuid4().hex[:8]}"
        async with make_worker(client, rt, task_queue=queue):
            return await scenario(client, queue)

    return asyncio.run(main())


def test_answered_request_runs_as_an_activity_and_charges_the_shared_ledger(
    temporal_server, worker_rt: Coordinator
) -> None:
    worker_rt.router.set_tiers([ScriptedTier("local", ['{"derivative": "2*x"}'])])

    async def scenario(client, queue):
        handle = await start_request(
            client,
            AskInput(schema=SCHEMA, prompt="d/dx x**2", workflow_id="wf-t"),
            task_queue=queue,
        )
        return await handle.result()

    outcome = _run(temporal_server, worker_rt, scenario)
    assert outcome.status == "answered"
    assert outcome.value == {"derivative": "2*x"}
    assert outcome.tier == "local"
    assert worker_rt.budgets.spent("wf-t") == outcome.cost > 0


def test_yield_waits_for_a_human_signal_and_rejects_invalid_answers(
    temporal_server, worker_rt: Coordinator
) -> None:
    worker_rt.router.set_tiers([ScriptedTier("local", [f"no json {i}" for i in range(3)])])

    async def scenario(client, queue):
        handle = await start_request(
            client,
            AskInput(schema=SCHEMA, prompt="d/dx x**2", workflow_id="wf-t"),
            task_queue=queue,
        )
        for _ in range(200):
            state = await handle.query("state")
            if state["state"] == "waiting_for_human":
                break
            await asyncio.sleep(0.05)
        assert state["state"] == "waiting_for_human"
        await handle.signal("answer", {"wrong": 1})
        for _ in range(200):
            state = await handle.query("state")
            if state["last_error"]:
                break
            await asyncio.sleep(0.05)
        assert state["state"] == "waiting_for_human" and state["last_error"]
        await handle.signal("answer", {"derivative": "2*x"})
        return await handle.result()

    outcome = _run(temporal_server, worker_rt, scenario)
    assert outcome.status == "answered" and outcome.tier == "human"
    assert outcome.value == {"derivative": "2*x"}
    assert [a["tier"] for a in outcome.attempts] == ["local", "local", "local", "human"]
    assert "human" in worker_rt.budgets.get("wf-t").by_tier
