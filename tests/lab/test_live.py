"""Foreground asks in a cell: the answer streams, an interrupt stops it in one line, a dry run
plans it, and the notebook's replay record answers it again exactly."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from coreason_runtime import Coordinator, EventType
from coreason_runtime.tensor import DryRun, ScriptedTier
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from coreason_lab import CoreasonMagics
from tests.lab.conftest import tiers

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ANSWER = '{"value": 42}'
# 301 tokens of a scripted tier (it splits on spaces): time to interrupt it. Never valid JSON, so
# a cell that was not interrupted fails loudly rather than answering.
LONG = '{"value": ' + " ".join("4" * 300) + "}"


@pytest.fixture
def wf(rt: Coordinator) -> str:
    rt.budgets.set("wf", ceiling=100_000)
    return "wf"


def streaming(rt: Coordinator, text: str, delay: float = 0.0) -> ScriptedTier:
    tier = ScriptedTier("local", [text], repeat_last=True, bus=rt.bus, delay=delay)
    tiers(rt, tier)
    return tier


def spaced(value: int) -> str:
    """``{"value": 1 2 3}``-like JSON split in tokens, so the value grows token by token."""
    return '{"value": ' + " ".join(str(value)) + "}"


# --- streaming ---------------------------------------------------------------------------------


def test_an_ask_shows_its_answer_growing_then_the_validated_value(
    ip: InteractiveShell, rt: Coordinator, wf: str
) -> None:
    streaming(rt, '{"value": 42, "note": "a b c d e f"}', delay=0.05)
    ip.run_cell("class Noted(BaseModel):\n    value: int\n    note: str\n")
    with capture_output() as out:
        result = ip.run_cell_magic("coreason", "ask Noted -w wf", "six times seven?")
    htmls = [o.data.get("text/html", "") for o in out.outputs]
    drawn = [h for h in htmls if "coreason-stream" in h and "<pre>" in h]
    assert len(drawn) >= 2  # one output, redrawn in place as tokens arrived
    assert "&quot;value&quot;: 42" in drawn[0] and "a b c d e f" not in drawn[0]
    assert "&quot;note&quot;: &quot;a b c d e f&quot;" in drawn[-1]
    assert all(o.update for o in out.outputs[1 : len(drawn)])  # updates, not new outputs
    assert "streamed" in htmls[-1]  # the growing value gave way to one line
    assert ip.user_ns["answer"].note == "a b c d e f"
    assert result.result.value.value == 42  # type: ignore[attr-defined]


def test_no_stream_shows_only_the_answer(ip: InteractiveShell, rt: Coordinator, wf: str) -> None:
    streaming(rt, ANSWER, delay=0.01)
    with capture_output() as out:
        ip.run_cell_magic("coreason", "ask Answer -w wf --no-stream", "six times seven?")
    assert not any("coreason-stream" in o.data.get("text/html", "") for o in out.outputs)
    assert ip.user_ns["answer"].value == 42


def test_the_stream_setting_turns_it_off_for_every_ask(
    ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics, wf: str
) -> None:
    streaming(rt, ANSWER)
    ip.run_line_magic("config", "CoreasonMagics.stream = False")
    with capture_output() as out:
        ip.run_cell_magic("coreason", "ask Answer -w wf", "six times seven?")
    assert not any("coreason-stream" in o.data.get("text/html", "") for o in out.outputs)


# --- the kernel's interrupt --------------------------------------------------------------------


def interrupt_after_first_token(rt: Coordinator) -> threading.Thread:
    """SIGINT to the main thread once the request's first token is out (as Jupyter's ■ does)."""
    main = threading.main_thread().ident
    assert main is not None
    first, done = threading.Event(), threading.Event()
    sub = rt.bus.subscribe(lambda e: first.set(), EventType.TOKENS)

    def send() -> None:
        if first.wait(30) and not done.is_set():
            signal.pthread_kill(main, signal.SIGINT)
        sub.unsubscribe()

    t = threading.Thread(target=send)
    t.done = done  # type: ignore[attr-defined]  # set once the cell has returned
    t.start()
    return t


def run_interrupted(ip: InteractiveShell, rt: Coordinator, code: str) -> tuple[Any, str]:
    t = interrupt_after_first_token(rt)
    with capture_output() as out:
        result = ip.run_cell(code)
    t.done.set()  # type: ignore[attr-defined]  # too late to interrupt: send nothing
    t.join()
    return result, ANSI.sub("", out.stdout + out.stderr)


@pytest.mark.parametrize("stream", ["", " --no-stream"])
def test_an_interrupted_ask_ends_with_one_line_and_an_exact_ledger(
    ip: InteractiveShell, rt: Coordinator, wf: str, stream: str
) -> None:
    streaming(rt, LONG, delay=0.05)  # 20 s uninterrupted: room for a starved sender thread
    result, text = run_interrupted(ip, rt, f"%%coreason ask Answer -w wf -n 400{stream}\nlong?")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    ledger = rt.budgets.get("wf")
    assert text.strip().splitlines()[-1] == (
        f"KeyboardInterrupt: interrupted after {ledger.tokens_out} tokens; C {ledger.spent:g} "
        "charged to workflow 'wf', nothing left reserved"
    )
    assert "Traceback" not in text
    assert ledger.reserved == 0 and 0 < ledger.tokens_out < 300
    # the workflow stays usable: the next ask runs normally
    streaming(rt, ANSWER)
    ip.run_cell_magic("coreason", "ask Answer -w wf", "again?")
    assert ip.user_ns["answer"].value == 42


def test_an_interrupted_plain_generate_ends_with_one_line(
    ip: InteractiveShell, rt: Coordinator, wf: str
) -> None:
    streaming(rt, LONG, delay=0.05)  # 20 s uninterrupted: room for a starved sender thread
    ip.user_ns["rt"] = rt
    result, text = run_interrupted(
        ip, rt, "res = rt.router.generate(Answer, 'long?', workflow_id='wf', max_tokens=400)"
    )
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    ledger = rt.budgets.get("wf")
    assert text.strip() == (
        f"KeyboardInterrupt: interrupted after {ledger.tokens_out} tokens on tier 'local'; "
        f"C {ledger.spent:g} charged to workflow 'wf', nothing left reserved"
    )
    assert ledger.reserved == 0


def test_an_interrupted_run_ends_with_one_line(
    ip: InteractiveShell, rt: Coordinator, wf: str
) -> None:
    streaming(rt, LONG, delay=0.05)  # 20 s uninterrupted: room for a starved sender thread
    ip.user_ns["rt"] = rt
    ip.run_cell_magic(
        "coreason",
        "thunk slow -w wf",
        "rt.router.generate(Answer, 'long?', workflow_id='wf', max_tokens=400)",
    )
    result, text = run_interrupted(ip, rt, "%coreason run -w wf")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    ledger = rt.budgets.get("wf")
    assert text.strip().splitlines()[-1] == (
        f"KeyboardInterrupt: the run of workflow 'wf' was aborted; C {ledger.spent:g} charged "
        "while it ran, nothing left reserved"
    )
    assert ledger.reserved == 0 and ledger.spent > 0


# --- cost before spend -------------------------------------------------------------------------


def test_dry_run_plans_the_ask_and_spends_nothing(
    ip: InteractiveShell, rt: Coordinator, wf: str
) -> None:
    tier = streaming(rt, ANSWER)
    plan = ip.run_cell_magic("coreason", "ask Answer -w wf -n 40 --dry-run", "six times seven?")
    assert isinstance(plan, DryRun)
    assert plan.tiers[0].reserve == rt.budgets.cost(plan.tiers[0].prompt_tokens, 40)
    assert rt.budgets.get("wf").spent == 0 and tier.requests == []
    assert "answer" not in ip.user_ns
    assert "first attempt leases" in plan._repr_html_()


# --- replay ------------------------------------------------------------------------------------


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch, rt: Coordinator) -> Iterator[str]:
    monkeypatch.setenv("JPY_SESSION_NAME", "/work/notebooks/tour.ipynb")
    rt.router.cache = None  # only replay may answer a repeated question here
    yield "/work/notebooks/tour.ipynb"


def test_a_notebook_replays_its_answers_at_no_cost(
    ip: InteractiveShell, rt: Coordinator, wf: str, notebook: str
) -> None:
    tier = streaming(rt, ANSWER)
    first = ip.run_cell_magic("coreason", "ask Answer -w wf", "six times seven?")
    spent = rt.budgets.spent("wf")
    tier2 = streaming(rt, '{"value": 41}')  # would answer differently now
    again = ip.run_cell_magic("coreason", "ask Answer -w wf", "six times seven?")
    assert again.result.value == first.result.value  # type: ignore[attr-defined]
    assert again.result.replayed and rt.budgets.spent("wf") == spent  # type: ignore[attr-defined]
    assert len(tier.requests) == 1 and tier2.requests == []


def test_replay_verbs_switch_and_clear_the_record(
    ip: InteractiveShell, rt: Coordinator, wf: str, notebook: str
) -> None:
    tier = streaming(rt, ANSWER)
    ip.run_cell_magic("coreason", "ask Answer -w wf", "q?")
    status = ip.run_line_magic("coreason", "replay").data
    assert "replay <b>on</b> · 1 recorded answer(s)" in status and "tour-" in status
    ip.run_line_magic("coreason", "replay off")
    ip.run_cell_magic("coreason", "ask Answer -w wf", "q?")
    assert len(tier.requests) == 2
    ip.run_line_magic("coreason", "replay on")
    ip.run_cell_magic("coreason", "ask Answer -w wf", "q?")
    assert len(tier.requests) == 2  # replayed
    assert "1 answer(s) forgotten" in ip.run_line_magic("coreason", "replay clear").data
    ip.run_cell_magic("coreason", "ask Answer -w wf", "q?")
    assert len(tier.requests) == 3


def test_outside_a_notebook_replay_waits_to_be_asked(
    ip: InteractiveShell, rt: Coordinator, wf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    rt.router.cache = None
    tier = streaming(rt, ANSWER)
    ip.run_cell_magic("coreason", "ask Answer -w wf", "q?")
    ip.run_cell_magic("coreason", "ask Answer -w wf", "q?")
    assert len(tier.requests) == 2
    assert "replay <b>off</b>" in ip.run_line_magic("coreason", "replay").data


def test_replay_takes_only_its_words(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="invalid choice: 'maybe'"):
        ip.run_line_magic("coreason", "replay maybe")
