"""Controls across runtimes: an intent given on one reaches the work of another through Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import (
    ControlState,
    Coordinator,
    EventType,
    WorkflowAbortedError,
)
from coreason_runtime._controls import INTENTS
from coreason_runtime.events import BudgetCharged
from coreason_runtime.models import LoadedModel
from coreason_runtime.scale import ControlBridge, cluster_runtime
from coreason_runtime.scale._control_bridge import INTENT_OF
from coreason_runtime.tensor._local import LocalTier
from pydantic import BaseModel, Field

from tests.runtime.scale._helpers import wait_for

pytestmark = pytest.mark.redis


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


def _seen(rt: Coordinator, kind: EventType, source_prefix: str = "") -> threading.Event:
    seen = threading.Event()

    def on(event: Any) -> None:
        if (event.source or "").startswith(source_prefix):
            seen.set()

    rt.bus.subscribe(on, kind)
    return seen


@pytest.fixture
def worker(tmp_path: Path, redis_url: str, tiny_model: LoadedModel) -> Iterator[Coordinator]:
    rt = cluster_runtime(redis_url, home=tmp_path / "worker")
    rt.router.set_tiers([LocalTier(tiny_model, bus=rt.bus)])
    rt.router.cache = None
    rt.budgets.set("wf", ceiling=None)
    with ControlBridge(rt.controls, rt.bus, redis_url, member="w1", forward_events=True):
        yield rt
    rt.close()


@pytest.fixture
def notebook(tmp_path: Path, redis_url: str) -> Iterator[Coordinator]:
    rt = cluster_runtime(redis_url, home=tmp_path / "notebook")
    with ControlBridge(rt.controls, rt.bus, redis_url, member="nb", receive_events=True):
        yield rt
    rt.close()


def _ask(rt: Coordinator) -> Any:
    return rt.router.generate(Reading, "Report.", workflow_id="wf", max_tokens=60)


def test_every_intent_travels() -> None:
    assert set(INTENT_OF.values()) == set(INTENTS)


def test_a_pause_in_one_runtime_parks_a_decode_in_another_until_resumed(
    worker: Coordinator, notebook: Coordinator
) -> None:
    reference = _ask(worker)
    worker.budgets.reset("wf")
    started = _seen(worker, EventType.TOKENS)
    parked = _seen(notebook, EventType.DECODE_PAUSED, source_prefix="w1/")
    held = threading.Event()

    def hold_until_the_intent_arrives(event: Any) -> None:
        # The answer is a few tokens long: the decode waits after its first token until the
        # notebook's pause has crossed Redis, so it cannot finish before the intent lands.
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 30
            while worker.controls.state("wf") is not ControlState.PAUSED:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)

    worker.bus.subscribe(hold_until_the_intent_arrives, EventType.TOKENS)
    t, out = _in_thread(lambda: _ask(worker))
    assert started.wait(30)
    notebook.controls.pause("wf")
    assert parked.wait(10), "the worker's decode did not park (or its event did not arrive)"
    assert worker.controls.state("wf") is ControlState.PAUSED
    assert t.is_alive()
    notebook.controls.resume("wf")
    t.join(60)
    assert out[0].value == reference.value
    assert worker.budgets.spent("wf") == reference.cost


def test_an_abort_in_one_runtime_stops_a_request_in_another_with_the_ledger_exact(
    worker: Coordinator, notebook: Coordinator
) -> None:
    charged: list[float] = []
    worker.bus.subscribe(
        lambda e: charged.append(e.data.cost) if isinstance(e.data, BudgetCharged) else None,
        EventType.BUDGET_CHARGED,
    )
    started = _seen(worker, EventType.TOKENS)
    t, out = _in_thread(lambda: _ask(worker))
    assert started.wait(30)
    notebook.controls.abort("wf")
    t.join(30)
    assert isinstance(out[0], WorkflowAbortedError)
    ledger = notebook.budgets.get("wf")
    assert ledger.reserved == pytest.approx(0, abs=1e-6)
    assert ledger.spent == sum(charged) > 0


def test_a_member_that_joins_later_finds_the_workflow_paused(
    tmp_path: Path, redis_url: str, notebook: Coordinator
) -> None:
    notebook.controls.pause("wf")
    late = cluster_runtime(redis_url, home=tmp_path / "late")
    bridge = ControlBridge(late.controls, late.bus, redis_url, member="late")
    wait_for(lambda: (bridge.last_intent("wf") or {}).get("intent") == "pause", "the intent")
    with bridge:
        assert late.controls.state("wf") is ControlState.PAUSED
        notebook.controls.resume("wf")
        wait_for(lambda: late.controls.state("wf") is ControlState.RUNNING, "the resume")
    late.close()


def test_an_abort_reaches_requests_scheduled_before_it_only(
    redis_url: str, notebook: Coordinator
) -> None:
    bridge = ControlBridge(notebook.controls, notebook.bus, redis_url, member="probe")
    before = time.time()
    notebook.controls.abort("wf")
    wait_for(lambda: bridge.last_intent("wf") is not None, "the abort to be recorded")
    assert bridge.aborted_since("wf", before)
    assert not bridge.aborted_since("wf", time.time() + 1)


def test_intents_are_published_once_and_events_never_echo(
    redis_url: str, worker: Coordinator, notebook: Coordinator
) -> None:
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe("coreason:default:intents")
    notebook.controls.pause("wf")  # applied on the worker, which must not publish it again
    wait_for(lambda: worker.controls.state("wf") is ControlState.PAUSED, "the pause")
    notebook.controls.resume("wf")
    wait_for(lambda: worker.controls.state("wf") is ControlState.RUNNING, "the resume")
    messages = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        m = sub.get_message(timeout=0.1)
        if m is not None:
            messages.append(json.loads(m["data"]))
    assert [(m["intent"], m["origin"]) for m in messages] == [("pause", "nb"), ("resume", "nb")]
    remote = [e for e in notebook.bus.history(["workflow"]) if e.source == "w1/controls"]
    assert remote == []  # applied there on our word: not forwarded back to us
    sub.close()
    r.close()
