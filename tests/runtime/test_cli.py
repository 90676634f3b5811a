"""The `coreason` command's answers to bad input: typed reasons, never argparse puzzles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coreason_runtime import Coordinator, RuntimeConfig
from coreason_runtime.cli import main
from coreason_runtime.tensor import ScriptedTier


@pytest.mark.parametrize("value", ["-inf", "-1e3", "-5", "nan", "inf", "0"])
def test_budget_set_with_a_bad_ceiling_names_the_typed_reason(
    home: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(["budget", "set", "wf", value]) == 2
    err = capsys.readouterr().err
    assert "InvalidCeilingError" in err and "positive finite" in err


def test_budget_options_and_positive_ceilings_parse_as_before(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["budget", "--json", "set", "wf", "12.5"]) == 0
    capsys.readouterr()
    assert main(["budget", "--json", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert any(led["workflow_id"] == "wf" and led["ceiling"] == 12.5 for led in shown)


def test_ask_failures_say_why_each_attempt_failed(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def runtime(args: object) -> Coordinator:
        rt = Coordinator(RuntimeConfig(home=home, subgoal_cache=False))
        wrong = ['{"n": "three"}', '{"n": "four"}', '{"n": "five"}']  # three distinct failures
        rt.router.set_tiers([ScriptedTier("local", wrong)])
        return rt

    monkeypatch.setattr("coreason_runtime.cli._runtime", runtime)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert main(["ask", "count", "--schema", json.dumps(schema)]) == 2
    err = capsys.readouterr().err
    assert "EpistemicYieldError" in err
    reasons = [line for line in err.splitlines() if line.startswith("  local#")]
    assert len(reasons) == 3
    assert all("ValidationFailure: " in r and "integer" in r for r in reasons)
