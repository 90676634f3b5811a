"""A request that reaches its ceiling is suspended, durably, until the ceiling is raised."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import Coordinator, EventType
from coreason_runtime.events import RequestContinued, RequestSuspended
from coreason_runtime.scale import DEMO_SCHEMA, AskInput, PacedTier, cluster_runtime, start_request

from tests.runtime.scale._helpers import run_with_workers, until

pytestmark = [pytest.mark.temporal, pytest.mark.redis]


@pytest.fixture
def rt(tmp_path: Path, redis_url: str) -> Iterator[Coordinator]:
    runtime = cluster_runtime(redis_url, home=tmp_path / "worker")
    runtime.router.set_tiers([PacedTier("local", tokens=20, token_s=0.0)])
    runtime.router.cache = None  # every request pays; no answer comes from the subgoal cache
    yield runtime
    runtime.close()


def _ask(wf: str, prompt: str = "say twenty words") -> AskInput:
    return AskInput(schema=DEMO_SCHEMA, prompt=prompt, workflow_id=wf, max_tokens=30)


def _one_request_cost(temporal_server, redis_url: str, rt: Coordinator) -> float:
    rt.budgets.set("probe", ceiling=None)

    async def scenario(client, queue):
        return await (await start_request(client, _ask("probe"), task_queue=queue)).result()

    return run_with_workers(temporal_server.address, redis_url, [rt], scenario).cost


def test_a_request_at_its_ceiling_waits_suspended_and_goes_on_when_it_is_raised(
    temporal_server, redis_url: str, rt: Coordinator
) -> None:
    cost = _one_request_cost(temporal_server, redis_url, rt)
    ceiling = 1.5 * cost  # the first request fits, the second cannot finish
    rt.budgets.set("wf", ceiling=ceiling)
    events = rt.bus.listen([EventType.REQUEST_SUSPENDED, EventType.REQUEST_CONTINUED])

    async def scenario(client, queue):
        first = await (await start_request(client, _ask("wf"), task_queue=queue)).result()
        handle = await start_request(client, _ask("wf"), task_queue=queue)
        state = await until(lambda: _state_if(handle, "suspended"), "the second request to suspend")
        at_suspension = rt.budgets.get("wf")
        handle_state = await handle.query("state")
        await handle.signal("raise_ceiling", 3 * cost)
        second = await handle.result()
        return first, state, at_suspension, handle_state, second

    first, state, at_suspension, handle_state, second = run_with_workers(
        temporal_server.address, redis_url, [rt], scenario
    )
    assert first.status == second.status == "answered"
    suspension = state["suspension"]
    assert suspension["reason"] == "ceiling" and suspension["ceiling"] == ceiling
    assert suspension["worker"] == "w1"
    assert at_suspension.spent <= ceiling and at_suspension.reserved == pytest.approx(0, abs=1e-6)
    assert handle_state["state"] == "suspended"
    ledger = rt.budgets.get("wf")
    assert ledger.ceiling == 3 * cost
    assert ledger.spent == pytest.approx(first.cost + second.cost)
    assert second.cost > cost  # the cut-off generation was charged too, then a full one
    kinds = [type(e.data) for e in events.drain()]
    assert kinds == [RequestSuspended, RequestContinued]


async def _state_if(handle, wanted: str):
    state = await handle.query("state")
    return state if state["state"] == wanted else None


def test_top_up_adds_to_the_ceiling_and_a_human_may_answer_a_suspended_request(
    temporal_server, redis_url: str, rt: Coordinator
) -> None:
    cost = _one_request_cost(temporal_server, redis_url, rt)
    rt.budgets.set("wf", ceiling=0.5 * cost)  # nothing fits to the end

    async def scenario(client, queue):
        topped = await start_request(client, _ask("wf", "first"), task_queue=queue)
        await until(lambda: _state_if(topped, "suspended"), "the first request to suspend")
        await topped.signal("top_up", 2 * cost)
        answered = await topped.result()
        spent = rt.budgets.spent("wf")
        rt.budgets.set("wf", ceiling=spent + 1)  # nothing fits any more
        human = await start_request(client, _ask("wf", "second"), task_queue=queue)
        await until(lambda: _state_if(human, "suspended"), "the second request to suspend")
        await human.signal("answer", {"answer": "from a person"})
        return answered, await human.result()

    answered, human = run_with_workers(temporal_server.address, redis_url, [rt], scenario)
    assert answered.status == "answered" and answered.tier == "local"
    assert rt.budgets.get("wf").by_tier["human"] == 0.0
    assert human.status == "answered" and human.tier == "human"
    assert human.value == {"answer": "from a person"}
    assert human.attempts[-1]["tier"] == "human"
    assert rt.budgets.get("wf").spent <= rt.budgets.get("wf").ceiling


def test_a_request_refused_while_others_hold_the_room_waits_for_them_instead_of_suspending(
    temporal_server, redis_url: str, rt: Coordinator
) -> None:
    rt.router.set_tiers([PacedTier("local", tokens=20, token_s=0.05)])
    cost = _one_request_cost(temporal_server, redis_url, rt)
    rt.budgets.set("wf", ceiling=2.5 * cost)  # room for both, but one reservation takes it all
    # worst-case reservations up front, no waiting in the cage (leases would never refuse
    # here): the refusal must be waited out by the workflow, not suspended
    rt.budgets.lease_tokens, rt.budgets.lease_wait = None, 0.0
    refused = rt.bus.listen([EventType.BUDGET_EXCEEDED, EventType.REQUEST_SUSPENDED])
    wide = AskInput(schema=DEMO_SCHEMA, prompt="wide", workflow_id="wf", max_tokens=256)

    async def scenario(client, queue):
        handles = [await start_request(client, wide, task_queue=queue) for _ in range(2)]
        return [await asyncio.wait_for(h.result(), 90) for h in handles]  # none suspends

    outcomes = run_with_workers(temporal_server.address, redis_url, [rt], scenario)
    assert [o.status for o in outcomes] == ["answered", "answered"]
    kinds = [e.type for e in refused.drain()]
    assert EventType.BUDGET_EXCEEDED in kinds  # the second was refused at first ...
    assert EventType.REQUEST_SUSPENDED not in kinds  # ... and waited, not suspended
    assert rt.budgets.spent("wf") == pytest.approx(sum(o.cost for o in outcomes))
