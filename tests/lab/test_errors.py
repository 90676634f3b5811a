"""Short, typed errors in cells: a few lines for a CoreasonError, the full traceback a %tb away."""

from __future__ import annotations

import re

import pytest
from coreason_runtime import (
    Coordinator,
    CoreasonError,
    MissingExtraError,
    ValidationFailure,
    WorkflowAbortedError,
)
from coreason_runtime.tensor import Attempt
from IPython.core.interactiveshell import InteractiveShell
from pydantic import BaseModel, ValidationError

import coreason_lab
from coreason_lab._errors import summarize, user_traceback

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(ip: InteractiveShell, code: str, capsys: pytest.CaptureFixture[str]) -> str:
    ip.run_cell(code)
    out = capsys.readouterr()
    return ANSI.sub("", out.out + out.err)


def test_the_budget_cage_cell_shows_a_short_error(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("coreason", "budget tiny 4")
    capsys.readouterr()
    text = run(ip, "%%coreason ask Answer -w tiny\nWhat is 6*7?", capsys)
    lines = text.strip().splitlines()
    assert lines[0].startswith("BudgetExceededError: workflow 'tiny'")
    assert "  ledger  tiny: Ω 4 · C 0 spent · 0 reserved · 4 left" in lines
    assert any("→ raise the ceiling: %coreason budget tiny" in ln for ln in lines)
    assert lines[-1].strip() == "→ full traceback: %tb (or %coreason debug)"
    assert "Traceback" not in text and "_sqlite.py" not in text
    assert len(lines) <= 8


@pytest.mark.parametrize("command", ["%tb", "%coreason debug"])
def test_the_full_traceback_is_one_command_away(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    ip.run_line_magic("coreason", "budget tiny 4")
    run(ip, "%%coreason ask Answer -w tiny\nWhat is 6*7?", capsys)
    text = run(ip, command, capsys)
    assert "Traceback" in text
    assert "_sqlite.py" in text  # where the ledger refused the reservation
    assert "BudgetExceededError" in text


def test_plain_code_raising_a_coreason_error_is_short_too(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str], rt: Coordinator
) -> None:
    ip.user_ns["rt"] = rt
    text = run(ip, "rt.router.generate(Answer, 'q', workflow_id='nope')", capsys)
    assert text.startswith("UnknownWorkflowError: no ledger for workflow 'nope'")
    assert "→ create the ledger first: %coreason budget nope 20000" in text
    assert "Traceback" not in text


def test_short_errors_can_be_turned_off(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("config", "CoreasonMagics.short_errors = False")
    ip.run_line_magic("coreason", "budget tiny 4")
    text = run(ip, "%%coreason ask Answer -w tiny\nWhat is 6*7?", capsys)
    assert "Traceback" in text


def test_other_errors_keep_their_traceback(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    text = run(ip, "def f():\n    return 1 / 0\nf()", capsys)
    assert "Traceback" in text and "ZeroDivisionError" in text and "return 1 / 0" in text


def test_an_interrupt_that_stopped_nothing_keeps_its_traceback(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    text = run(ip, "raise KeyboardInterrupt", capsys)
    assert "Traceback" in text and "KeyboardInterrupt" in text


def test_a_steps_own_error_shows_its_lines_without_ours(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell_magic("coreason", "thunk side", "x = 2\nx / 0\n")
    text = run(ip, "%coreason run", capsys)
    assert "ZeroDivisionError" in text
    assert "<thunk side>" in text and "x / 0" in text  # the step's own line, with its source
    for ours in ("_steps_run.py", "_steps.py", "concurrent/futures", "_live.py", "_jobs.py"):
        assert ours not in text


def test_unloading_gives_the_shell_its_handler_back(ip: InteractiveShell, rt: Coordinator) -> None:
    assert CoreasonError in ip.custom_exceptions
    coreason_lab.unload_ipython_extension(ip)
    assert ip.custom_exceptions == ()
    coreason_lab.load_ipython_extension(ip, runtime=rt)  # the fixture unloads it again
    assert CoreasonError in ip.custom_exceptions


def test_a_validation_failure_names_the_failing_field() -> None:
    class Two(BaseModel):
        a: int

    try:
        Two.model_validate_json('{"a": "x"}')
    except ValidationError as cause:
        error = ValidationFailure("output failed validation", output='{"a": "x"}')
        error.__cause__ = cause
    facts = dict(summarize(error).facts)
    assert facts["field"].startswith("a: Input should be a valid integer")


def test_attempts_are_summed_in_one_line() -> None:
    attempts = [
        Attempt(tier="local", index=1, cost=12, error_type="ValidationFailure"),
        Attempt(tier="local", index=2, cost=30, error_type="ValidationFailure"),
    ]
    error = WorkflowAbortedError("aborted", workflow_id="wf", attempts=attempts, tier="local")
    facts = dict(summarize(error).facts)
    assert facts["attempts"] == (
        "local#1 ValidationFailure (C 12), local#2 ValidationFailure (C 30) · C 42 charged in all"
    )
    assert summarize(error).next[0].startswith("the workflow stays usable")


def test_a_missing_extra_says_what_to_install() -> None:
    assert summarize(MissingExtraError("openai", "oracle")).next[0] == (
        "pip install 'coreason-runtime[oracle]'"
    )


def test_our_frames_are_taken_out_of_a_users_traceback() -> None:
    with pytest.raises(AttributeError) as info:
        summarize(None)  # type: ignore[arg-type]  # fails inside coreason_lab
    files = []
    tb = user_traceback(info.value.__traceback__)
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    assert files and all("/coreason_lab/" not in f for f in files)
    assert any(f.endswith("test_errors.py") for f in files)
