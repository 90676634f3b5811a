"""Workflow controls in the runtime: pause, resume, preempt, abort from any thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import (
    BudgetExceededError,
    Controls,
    ControlState,
    Coordinator,
    CoreasonError,
    EventBus,
    EventType,
    RequestError,
    RuntimeConfig,
    WorkflowAbortedError,
)
from coreason_runtime.models import LoadedModel
from coreason_runtime.tensor import ScriptedTier
from coreason_runtime.tensor._local import LocalTier
from pydantic import BaseModel, Field


class Reading(BaseModel):
    sensor: str = Field(max_length=12)
    level: int = Field(ge=0, le=99)


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# --- the controls alone -----------------------------------------------------------------------


def test_a_checkpoint_blocks_while_paused_and_goes_on_after_resume() -> None:
    controls = Controls()
    with controls.scope("wf") as ticket:
        controls.pause("wf")
        t, out = _in_thread(lambda: ticket.checkpoint() or "passed")
        t.join(0.3)
        assert t.is_alive() and controls.status("wf").waiting == 1
        controls.resume("wf")
        t.join(5)
    assert out == ["passed"]


def test_an_abort_reaches_running_work_but_not_work_started_after_it() -> None:
    controls = Controls()
    with controls.scope("wf") as old:
        controls.abort("wf")
        with pytest.raises(WorkflowAbortedError) as info:
            old.checkpoint()
        assert info.value.workflow_id == "wf"
        assert old.state is ControlState.ABORTED
    with controls.scope("wf") as new:
        new.checkpoint()  # the workflow stays usable
        assert controls.state("wf") is ControlState.RUNNING


def test_an_abort_wakes_a_paused_checkpoint_with_the_error() -> None:
    controls = Controls()
    with controls.scope("wf") as ticket:
        controls.pause("wf")
        t, out = _in_thread(ticket.checkpoint)
        t.join(0.2)
        controls.abort("wf")
        t.join(5)
    assert isinstance(out[0], WorkflowAbortedError)


def test_an_abort_is_not_a_budget_error() -> None:
    assert not issubclass(WorkflowAbortedError, BudgetExceededError)
    assert issubclass(WorkflowAbortedError, CoreasonError)


def test_tracked_work_is_told_at_once_even_when_already_paused() -> None:
    controls = Controls()
    seen: list[ControlState] = []

    class Work:
        def control(self, state: ControlState) -> None:
            seen.append(state)

    controls.pause("wf")
    with controls.scope("wf") as ticket, ticket.track(Work()):
        controls.preempt("wf")
        controls.abort("wf")
    controls.pause("wf")  # no longer tracked
    assert seen == [ControlState.PAUSED, ControlState.PREEMPTED, ControlState.ABORTED]


def test_each_change_is_announced_once_with_the_previous_state() -> None:
    bus = EventBus()
    controls = Controls(bus)
    controls.pause("wf", reason="lunch")
    controls.pause("wf")
    controls.resume("wf")
    events = bus.history(["workflow"])
    assert [e.type for e in events] == [EventType.WORKFLOW_PAUSED, EventType.WORKFLOW_RESUMED]
    assert events[0].data.previous == "running"
    assert events[0].data.reason == "lunch"


def test_intents_by_name_and_bad_ones() -> None:
    controls = Controls()
    assert controls.apply("preempt", "wf") is ControlState.PREEMPTED
    with pytest.raises(RequestError, match="unknown intent"):
        controls.apply("explode", "wf")
    with pytest.raises(RequestError):
        controls.pause("")


# --- a plain script controlling its own requests ----------------------------------------------


@pytest.fixture
def rt(home: Path, tiny_model: LoadedModel) -> Iterator[Coordinator]:
    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=False))
    runtime.router.set_tiers([LocalTier(tiny_model, bus=runtime.bus)])
    runtime.budgets.set("wf", ceiling=None)
    yield runtime
    runtime.close()


def _wait_for(rt: Coordinator, kind: EventType) -> threading.Event:
    seen = threading.Event()
    rt.bus.subscribe(lambda e: seen.set(), kind)
    return seen


def test_a_script_pauses_and_resumes_its_running_generate(rt: Coordinator) -> None:
    reference = rt.router.generate(Reading, "Report.", workflow_id="wf", max_tokens=60)
    rt.budgets.reset("wf")
    started = _wait_for(rt, EventType.TOKENS)
    paused = _wait_for(rt, EventType.DECODE_PAUSED)
    t, out = _in_thread(
        lambda: rt.router.generate(Reading, "Report.", workflow_id="wf", max_tokens=60)
    )
    assert started.wait(30)
    rt.controls.pause("wf")
    assert paused.wait(10)
    assert rt.controls.state("wf") is ControlState.PAUSED
    assert t.is_alive()
    rt.controls.resume("wf")
    t.join(60)
    assert out[0].value == reference.value
    assert rt.budgets.spent("wf") == reference.cost


def test_a_script_aborts_its_running_generate_and_the_ledger_is_exact(rt: Coordinator) -> None:
    started = _wait_for(rt, EventType.TOKENS)
    t, out = _in_thread(
        lambda: rt.router.generate(Reading, "Report.", workflow_id="wf", max_tokens=60)
    )
    assert started.wait(30)
    rt.controls.abort("wf")
    t.join(30)
    err = out[0]
    assert isinstance(err, WorkflowAbortedError)
    assert len(err.attempts) == 1 and err.attempts[0].error_type == "WorkflowAbortedError"
    ledger = rt.budgets.get("wf")
    assert ledger.reserved == 0
    assert ledger.spent == err.attempts[0].cost > 0
    # the workflow stays usable
    assert rt.router.generate(Reading, "Report.", workflow_id="wf", max_tokens=60).tier == "local"


def test_an_abort_skips_retries_and_escalation(rt: Coordinator) -> None:
    slow = threading.Event()

    def step(request: Any) -> str:
        slow.wait(0.1)
        return " ".join(['{"sensor": "a", "level": 1}'] + ["pad"] * 50)

    oracle = ScriptedTier("oracle", ['{"sensor": "b", "level": 2}'])
    rt.router.set_tiers([ScriptedTier("local", [step] * 3), oracle])
    rt.controls.pause("wf")
    t, out = _in_thread(lambda: rt.router.generate(Reading, "Report.", workflow_id="wf"))
    t.join(0.3)
    assert t.is_alive()  # held before anything was reserved
    assert rt.budgets.get("wf").reserved == 0
    rt.controls.abort("wf")
    t.join(10)
    assert isinstance(out[0], WorkflowAbortedError)
    assert oracle.requests == []
    assert rt.budgets.spent("wf") == 0


def test_wait_stopped_waits_for_the_aborted_work_only() -> None:
    controls = Controls()
    old = controls.open("wf")
    controls.abort("wf")
    new = controls.open("wf")  # opened after the abort: not waited for
    assert controls.wait_stopped("wf", timeout=0.05) is False  # the aborted ticket is open
    closer = threading.Timer(0.1, controls.close, args=(old,))
    closer.start()
    assert controls.wait_stopped("wf", timeout=10) is True
    closer.join()
    assert controls.status("wf").running == 1  # the new work goes on
    controls.close(new)
