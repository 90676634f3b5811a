"""``coreason ask --verify``: the value on stdout, the verdict and each repair on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import Coordinator, RuntimeConfig, cli
from coreason_runtime.tensor import ScriptedTier

SCHEMA = {
    "type": "object",
    "properties": {"expression": {"type": "string"}, "derivative": {"type": "string"}},
    "required": ["expression", "derivative"],
}
WRONG = '{"expression": "x**2", "derivative": "x**2*ln(x)"}'


@pytest.fixture
def scripted(home: Path, monkeypatch: pytest.MonkeyPatch) -> list[Coordinator]:
    made: list[Coordinator] = []

    def runtime(args: Any) -> Coordinator:
        rt = Coordinator(RuntimeConfig(home=home, oracle=None, subgoal_cache=False))
        rt.router.set_tiers([ScriptedTier("local", [WRONG], repeat_last=True)])
        made.append(rt)
        return rt

    monkeypatch.setattr(cli, "_runtime", runtime)
    return made


def _ask(*extra: str) -> list[str]:
    return [
        "ask",
        "d/dx x**2",
        "--schema",
        json.dumps(SCHEMA),
        "-w",
        "wf",
        "--ceiling",
        "5000",
        *extra,
    ]


def test_ask_with_verify_prints_a_verified_value_and_its_repair(
    scripted: list[Coordinator], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(_ask("--verify", "derivative(of=expression, result=derivative)"))
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {"expression": "x**2", "derivative": "2*x"}
    assert "verified=true" in err
    assert "repair /derivative tier=cas accepted" in err


def test_ask_with_a_verifier_that_is_not_one_fails_before_any_spend(
    scripted: list[Coordinator], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_ask("--verify", "print(1)")) == 2
    assert "is not a verifier" in capsys.readouterr().err
    assert scripted == []  # the runtime was never started


def test_ask_without_verify_says_nothing_about_verification(
    scripted: list[Coordinator], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_ask()) == 0
    assert "verified" not in capsys.readouterr().err
