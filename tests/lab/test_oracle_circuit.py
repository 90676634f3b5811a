"""The Oracle Circuit: a yielded request becomes a form; a valid answer resumes the workflow."""

from __future__ import annotations

import pytest
from coreason_runtime import Coordinator, EpistemicYieldError, EventType
from coreason_runtime.tensor import ScriptedTier
from IPython.core.interactiveshell import InteractiveShell

from coreason_lab import CoreasonMagics, OracleForm
from coreason_lab._oracle_circuit import field_kind
from tests.lab.conftest import tiers

SCHEMA_CELL = (
    "from typing import Literal\n"
    "from pydantic import Field\n"
    "class Derivative(BaseModel):\n"
    "    expr: str = Field(min_length=3, description='d/dx of the input')\n"
    "    order: int\n"
    "    exact: bool\n"
    "    method: Literal['symbolic', 'numeric']\n"
    "    note: str | None = None\n"
)


@pytest.fixture
def yielded(ip: InteractiveShell, rt: Coordinator) -> OracleForm:
    """An ask whose every tier fails, so the form opens."""
    ip.run_cell(SCHEMA_CELL)
    tiers(rt, ScriptedTier("local", ["not json at all"], repeat_last=True))
    ip.run_line_magic("coreason", "budget wf 10000")
    form = ip.run_cell_magic("coreason", "ask Derivative -w wf -o d", "d/dx sin(x)?")
    assert isinstance(form, OracleForm)
    return form


def test_every_tier_failing_opens_a_form_with_a_widget_per_field(yielded: OracleForm) -> None:
    kinds = {name: kind for name, (_, kind, _) in yielded.fields.items()}
    assert kinds == {
        "expr": "string",
        "order": "integer",
        "exact": "boolean",
        "method": "enum",
        "note": "string",
    }


def test_the_yield_pauses_the_workflow(yielded: OracleForm, magics: CoreasonMagics) -> None:
    assert magics.controls.state("wf") == "paused"


def test_a_valid_answer_lands_in_the_namespace_as_tier_human(
    yielded: OracleForm, ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics
) -> None:
    result = yielded.fill(expr="cos(x)", order=1, exact=True, method="symbolic").submit()
    assert result.tier == "human"
    assert ip.user_ns["d"].expr == "cos(x)"
    assert magics.controls.state("wf") == "running"
    assert rt.bus.history([EventType.HUMAN_ANSWERED])[-1].workflow_id == "wf"


def test_an_invalid_answer_is_refused_and_changes_nothing(
    yielded: OracleForm, ip: InteractiveShell, magics: CoreasonMagics
) -> None:
    assert yielded.fill(expr="c", order=1, method="numeric").submit() is None
    assert "Not accepted" in yielded.message.value and "expr" in yielded.message.value
    assert "d" not in ip.user_ns
    assert magics.controls.state("wf") == "paused"


def test_clicking_submit_records_the_answer(yielded: OracleForm, ip: InteractiveShell) -> None:
    yielded.fill(expr="cos(x)", order=1, exact=True, method="symbolic")
    yielded.button.click()
    assert ip.user_ns["d"].method == "symbolic" and yielded.button.disabled


def test_filling_an_unknown_field_names_the_fields(yielded: OracleForm) -> None:
    with pytest.raises(KeyError, match="fields: expr, order"):
        yielded.fill(derivative="cos(x)")


def test_oracle_circuit_off_raises_the_yield(
    ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics
) -> None:
    magics.oracle_circuit = False
    tiers(rt, ScriptedTier("local", ["nope"], repeat_last=True))
    ip.run_line_magic("coreason", "budget wf 10000")
    with pytest.raises(EpistemicYieldError):
        ip.run_cell_magic("coreason", "ask Answer -w wf", "six times seven?")


def test_background_yield_puts_the_form_on_the_handle(
    ip: InteractiveShell, rt: Coordinator
) -> None:
    tiers(rt, ScriptedTier("local", ["nope"], repeat_last=True))
    ip.run_line_magic("coreason", "budget wf 10000")
    handle = ip.run_cell_magic("coreason", "ask Answer -w wf --background", "six times seven?")
    assert handle.wait(10) == "awaiting human"  # type: ignore[attr-defined]
    handle.form.fill(value=42).submit()  # type: ignore[attr-defined]
    assert handle.result().tier == "human" and ip.user_ns["answer"].value == 42  # type: ignore[attr-defined]


def test_optional_and_nullable_fields_are_recognised() -> None:
    schema = {"$defs": {"Inner": {"type": "object"}}}
    assert field_kind(schema, {"anyOf": [{"type": "integer"}, {"type": "null"}]}) == (
        "integer",
        {"anyOf": [{"type": "integer"}, {"type": "null"}], "type": "integer"},
        True,
    )
    assert field_kind(schema, {"$ref": "#/$defs/Inner"})[0] == "json"
