"""``%%coreason ask --verify``: the verdict and the repairs in the output, the form's reasons."""

from __future__ import annotations

import pytest
from coreason_runtime import Coordinator
from coreason_runtime.tensor import ScriptedTier
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from coreason_lab import OracleForm, ResultDisplay
from tests.lab.conftest import tiers

SCHEMA = "class Derivative(BaseModel):\n    expression: str\n    derivative: str\n"
WRONG = '{"expression": "x**2", "derivative": "x**2*ln(x)"}'


@pytest.fixture
def shell(ip: InteractiveShell) -> InteractiveShell:
    ip.run_cell(SCHEMA)
    ip.run_line_magic("coreason", "budget wf 10000")
    return ip


def test_a_verified_ask_shows_the_verdict_and_the_repair(
    shell: InteractiveShell, rt: Coordinator
) -> None:
    tiers(rt, ScriptedTier("local", [WRONG]))
    out = shell.run_cell_magic(
        "coreason",
        "ask Derivative -w wf --verify derivative(of=expression,result=derivative)",
        "d/dx x**2",
    )
    assert isinstance(out, ResultDisplay)
    assert shell.user_ns["answer"].derivative == "2*x"
    meta = out.metadata()
    assert meta["verified"] is True
    assert meta["repairs"] == [
        {
            "field": "/derivative",
            "tier": "cas",
            "accepted": True,
            "cost": out.result.repairs[0].cost,
        }
    ]
    page = out._repr_html_()
    assert "verified" in page and "coreason-repairs" in page and "x**2*ln(x)" in page


def test_a_callable_of_the_namespace_is_a_verifier(
    shell: InteractiveShell, rt: Coordinator
) -> None:
    tiers(rt, ScriptedTier("local", ['{"expression": "x", "derivative": "1"}']))
    shell.run_cell(
        "def positive(v):\n    return None if v.derivative != '0' else [('derivative', 'zero')]"
    )
    out = shell.run_cell_magic("coreason", "ask Derivative -w wf --verify positive", "d/dx x")
    assert isinstance(out, ResultDisplay) and out.result.verified


@pytest.mark.parametrize("bad", ["print", "derivative(of=x**2", "nonsense(result=d)"])
def test_a_bad_verify_option_is_a_usage_error(shell: InteractiveShell, bad: str) -> None:
    with pytest.raises(UsageError, match="--verify"):
        shell.run_cell_magic("coreason", f"ask Derivative -w wf --verify '{bad}'", "d/dx x")


def test_the_oracle_circuit_names_the_field_the_verifiers_rejected(
    shell: InteractiveShell, rt: Coordinator
) -> None:
    tiers(rt, ScriptedTier("local", [WRONG], repeat_last=True))
    shell.run_cell("def never(v):\n    return [('expression', 'not the question asked')]")
    form = shell.run_cell_magic("coreason", "ask Derivative -w wf --verify never", "d/dx x**3")
    assert isinstance(form, OracleForm)
    header = form.widget.children[0].value
    assert "rejected by the verifiers" in header and "not the question asked" in header
    row = form.widget.children[1]  # the expression field's row
    assert "✗ not the question asked" in row.children[2].value
