"""A streamed oracle answer stopped by an abort or by Ctrl-C while its server says nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from coreason_runtime import Coordinator, OracleConfig, WorkflowAbortedError
from coreason_runtime.tensor import RemoteTier, interrupt_summary

from tests.runtime.tensor._faulty_server import FaultyServer, running

SCHEMA = {
    "type": "object",
    "properties": {"value": {"type": "integer"}},
    "required": ["value"],
    "additionalProperties": False,
}


@pytest.fixture
def stalled() -> Iterator[FaultyServer]:
    """Two one-word chunks, then silence for 30 s (longer than any of these tests waits)."""
    with running("stall", tokens=2) as server:
        yield server


@pytest.fixture
def rt(home: object, stalled: FaultyServer) -> Iterator[Coordinator]:
    runtime = Coordinator(subgoal_cache=False)
    tier = RemoteTier(OracleConfig(base_url=stalled.base_url, model="m", api_key="k"))
    runtime.router.set_tiers([tier])
    runtime.budgets.set("wf", ceiling=10_000)
    yield runtime
    runtime.close()


def when_tokens_flow(rt: Coordinator, then: Any) -> threading.Thread:
    def watch() -> None:
        deadline = threading.Event()
        while not deadline.wait(0.005):
            if rt.controls.status("wf").tokens_out >= 2:  # both chunks charged: now it stalls
                then()
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_an_abort_cuts_a_stalled_stream_at_once(rt: Coordinator) -> None:
    t = when_tokens_flow(rt, lambda: rt.controls.abort("wf"))
    with pytest.raises(WorkflowAbortedError) as info:
        rt.router.generate(SCHEMA, "n?", workflow_id="wf", timeout=120)
    t.join()
    # the attempt itself ended by the abort: no timeout, no cut-off stream, no retry
    assert [a.error_type for a in info.value.attempts] == ["WorkflowAbortedError"]
    ledger = rt.budgets.get("wf")
    assert ledger.reserved == 0 and ledger.tokens_out == 2


def test_ctrl_c_closes_a_stalled_stream_and_settles(rt: Coordinator) -> None:
    main = threading.main_thread().ident
    assert main is not None
    t = when_tokens_flow(rt, lambda: signal.pthread_kill(main, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt) as info:
        rt.router.generate(SCHEMA, "n?", workflow_id="wf", timeout=120)
    t.join()
    ledger = rt.budgets.get("wf")
    assert ledger.reserved == 0 and ledger.tokens_out == 2
    assert interrupt_summary(info.value) == (
        f"interrupted after 2 tokens on tier 'oracle'; C {ledger.spent:g} charged to workflow "
        "'wf', nothing left reserved"
    )
