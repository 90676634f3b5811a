"""Ctrl-C and paused workflows on the request path: nothing reserved is left held."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import Coordinator, RuntimeConfig, WorkflowPausedError
from coreason_runtime.tensor import ScriptedSteerableTier, ScriptedTier

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=False))
    runtime.budgets.set("wf", ceiling=1400)
    yield runtime
    runtime.close()


def _interrupt_when(started: threading.Event) -> threading.Thread:
    """SIGINT this process (Ctrl-C reaches the main thread) once ``started`` is set."""

    def fire() -> None:
        if started.wait(30):
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", [ScriptedTier, ScriptedSteerableTier])
def test_ctrl_c_inside_a_tier_settles_the_reservation_at_what_ran(
    rt: Coordinator, kind: type[ScriptedTier]
) -> None:
    started = threading.Event()

    def step(request: Any) -> str:
        started.set()
        while True:  # a long decode, interrupted by the user
            time.sleep(0.01)

    rt.router.set_tiers([kind("local", [step])])
    firing = _interrupt_when(started)
    with pytest.raises(KeyboardInterrupt):
        rt.router.generate(SCHEMA, "count", workflow_id="wf", max_tokens=400)
    firing.join(5)
    ledger = rt.budgets.get("wf")
    assert ledger.reserved == 0
    prompt = rt.budgets.history("wf")[-1]
    assert ledger.spent == prompt.cost == prompt.tokens_in > 0
    assert prompt.note == "interrupted"


def test_a_request_on_a_paused_workflow_says_it_waits_and_runs_once_resumed(
    rt: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    rt.router.set_tiers([ScriptedTier("local", ['{"n": 1}'])])
    rt.controls.pause("wf")
    out: list[Any] = []
    caplog.set_level(logging.WARNING, "coreason_runtime.router")
    thread = threading.Thread(
        target=lambda: out.append(rt.router.generate(SCHEMA, "one", workflow_id="wf"))
    )
    thread.start()
    deadline = time.monotonic() + 10
    while rt.controls.status("wf").waiting == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert rt.budgets.get("wf").reserved == 0
    assert any("rt.controls.resume('wf')" in r.getMessage() for r in caplog.records)
    rt.controls.resume("wf")
    thread.join(10)
    assert out[0].value == {"n": 1}


def test_a_request_on_a_paused_workflow_raises_after_its_pause_timeout(rt: Coordinator) -> None:
    tier = ScriptedTier("local", ['{"n": 1}'])
    rt.router.set_tiers([tier])
    rt.controls.pause("wf")
    started = time.monotonic()
    with pytest.raises(WorkflowPausedError, match=r"rt\.controls\.resume\('wf'\)") as info:
        rt.router.generate(SCHEMA, "one", workflow_id="wf", pause_timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert info.value.workflow_id == "wf" and info.value.retryable
    assert tier.requests == []
    assert (rt.budgets.get("wf").reserved, rt.budgets.spent("wf")) == (0, 0)


def test_the_default_pause_timeout_comes_from_the_config(home: Path) -> None:
    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=False, pause_timeout=0.0))
    try:
        runtime.budgets.set("wf", ceiling=None)
        runtime.router.set_tiers([ScriptedTier("local", ['{"n": 1}'])])
        runtime.controls.preempt("wf")
        with pytest.raises(WorkflowPausedError, match="preempted"):
            runtime.router.generate(SCHEMA, "one", workflow_id="wf")
        runtime.controls.resume("wf")
        assert runtime.router.generate(SCHEMA, "one", workflow_id="wf").value == {"n": 1}
    finally:
        runtime.close()


def test_ctrl_c_while_waiting_on_a_paused_workflow_leaves_nothing_reserved(
    rt: Coordinator,
) -> None:
    rt.router.set_tiers([ScriptedTier("local", ['{"n": 1}'])])
    rt.controls.pause("wf")
    waiting = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 10
        while rt.controls.status("wf").waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting.set()

    threading.Thread(target=watch, daemon=True).start()
    firing = _interrupt_when(waiting)
    with pytest.raises(KeyboardInterrupt):
        rt.router.generate(SCHEMA, "one", workflow_id="wf", pause_timeout=math.inf)
    firing.join(5)
    status = rt.controls.status("wf")
    assert (status.running, status.waiting) == (0, 0)
    assert (rt.budgets.get("wf").reserved, rt.budgets.spent("wf")) == (0, 0)
