"""Ctrl-C in the middle of a request: the ledger stays exact and the workflow stays usable.

A ``KeyboardInterrupt`` reaches the thread that decodes (a plain ``rt.router.generate`` in a
script or a notebook cell) between any two bytecodes, most often inside a forward pass. These
tests deliver real SIGINTs (``signal.raise_signal`` / ``signal.pthread_kill`` to the main
thread) at the places that matter: inside a decoder layer, inside the cage's bookkeeping,
and at an arbitrary moment of a decode.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from coreason_runtime import Coordinator, EventType
from coreason_runtime._signals import interrupts_deferred
from coreason_runtime.budget import BudgetCage
from coreason_runtime.models import LoadedModel
from coreason_runtime.models._gate import decoder_layers
from coreason_runtime.tensor import interrupt_summary
from coreason_runtime.tensor._local import LocalTier
from pydantic import BaseModel, Field


class Reading(BaseModel):
    sensor: str = Field(max_length=12)
    level: int = Field(ge=0, le=99)


class Essay(BaseModel):
    """Long enough that an interrupt sent at the first token lands mid-decode."""

    text: str = Field(min_length=200, max_length=400)


PROMPT = "Report the sensor."


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rt(home: object, tiny_model: LoadedModel) -> Iterator[Coordinator]:
    runtime = Coordinator(subgoal_cache=False)
    runtime.budgets.set("wf", ceiling=100_000)
    runtime.router.set_tiers([LocalTier(tiny_model, bus=runtime.bus, stream_every=1)])
    yield runtime
    runtime.close()


def sigint_in_layer(model: Any, after_calls: int) -> Any:
    """A forward pre-hook on decoder layer 1 that sends SIGINT to this process on its n-th call:
    the interrupt lands inside a forward pass, between two layers."""
    calls = 0

    def hook(module: Any, args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == after_calls:
            signal.raise_signal(signal.SIGINT)

    return decoder_layers(model)[1].register_forward_pre_hook(hook)


def test_a_sigint_inside_the_block_waits_for_its_end() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        signal.raise_signal(signal.SIGINT)
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]


def test_off_the_main_thread_the_block_runs_as_is() -> None:
    seen: list[BaseException | None] = []

    def work() -> None:
        try:
            with interrupts_deferred():
                seen.append(None)
        except BaseException as e:  # recorded for the assertion
            seen.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [None]


def test_a_sigint_while_reserving_leaves_nothing_reserved(home: object) -> None:
    cage = BudgetCage()
    cage.set("wf", ceiling=1_000)
    sub = cage.bus.subscribe(
        lambda e: signal.raise_signal(signal.SIGINT), EventType.BUDGET_RESERVED
    )
    with pytest.raises(KeyboardInterrupt):
        cage.open("wf", 10, 20, "local")
    sub.unsubscribe()
    ledger = cage.get("wf")
    assert ledger.reserved == 0 and ledger.spent == 0
    assert [c.note for c in cage.history("wf")] == ["interrupted"]


def test_a_sigint_while_settling_still_writes_the_charge(home: object) -> None:
    cage = BudgetCage()
    cage.set("wf", ceiling=1_000)
    res = cage.open("wf", 10, 20, "local")
    res.charge(tokens_in=10, tokens_out=5)
    sub = cage.bus.subscribe(lambda e: signal.raise_signal(signal.SIGINT), EventType.BUDGET_CHARGED)
    with pytest.raises(KeyboardInterrupt):
        res.settle()
    sub.unsubscribe()
    ledger = cage.get("wf")
    assert ledger.reserved == 0 and ledger.spent == cage.cost(10, 5)


def test_an_interrupt_inside_a_forward_pass_settles_exactly(
    rt: Coordinator, tiny_model: LoadedModel
) -> None:
    reference = rt.router.generate(Reading, PROMPT, workflow_id="wf")
    spent_before = rt.budgets.spent("wf")
    handle = sigint_in_layer(tiny_model.model, after_calls=6)  # prefill, then 4 tokens, then …
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            rt.router.generate(Reading, PROMPT, workflow_id="wf", max_tokens=60)
    finally:
        handle.remove()
    ledger = rt.budgets.get("wf")
    charged = ledger.spent - spent_before
    summary = interrupt_summary(info.value)
    assert summary is not None
    assert f"C {charged:g} charged to workflow 'wf'" in summary
    assert ledger.reserved == 0
    assert rt.budgets.history("wf")[-1].note == "interrupted"
    # the workflow is usable and the model's caches are intact: the same answer again
    again = rt.router.generate(Reading, PROMPT, workflow_id="wf")
    assert again.value == reference.value and again.text == reference.text


def test_a_sigint_at_any_moment_of_a_decode_settles_exactly(rt: Coordinator) -> None:
    main = threading.main_thread().ident
    assert main is not None
    first_token = threading.Event()
    sub = rt.bus.subscribe(lambda e: first_token.set(), EventType.TOKENS)

    def interrupter() -> None:
        if first_token.wait(60):
            signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupter)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            rt.router.generate(Essay, PROMPT, workflow_id="wf", max_tokens=2000)
    finally:
        t.join()
        sub.unsubscribe()
    ledger = rt.budgets.get("wf")
    assert ledger.reserved == 0
    assert interrupt_summary(info.value) == (
        f"interrupted after {ledger.tokens_out} tokens on tier 'local'; C {ledger.spent:g} "
        "charged to workflow 'wf', nothing left reserved"
    )
    assert rt.router.generate(Reading, PROMPT, workflow_id="wf").value is not None
