"""Small defects a skeptical user met: each one's regression test (issue: hardening)."""

from __future__ import annotations

import pytest
from coreason_runtime import Coordinator, InvalidCeilingError
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from pydantic import BaseModel

from coreason_lab._ask import resolve_schema


def test_check_of_an_invariant_with_an_undefined_name_raises_the_name_error(
    ip: InteractiveShell,
) -> None:
    ip.user_ns["energy"] = 5
    ip.run_cell_magic("coreason", "invariant positive", "enrgy >= 0")
    with pytest.raises(NameError, match="enrgy") as info:
        ip.run_line_magic("coreason", "check")
    assert any("positive" in note for note in getattr(info.value, "__notes__", []))


def test_magic_usage_errors_say_usage_once(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("coreason", "budget --nope")
    assert "usage: usage:" not in str(info.value)
    assert str(info.value).count("usage:") == 1


def test_ipython_output_history_is_never_offered_as_a_schema() -> None:
    class Answer(BaseModel):
        value: int

    ns = {"Out": {1: "an output"}, "_oh": {}, "Answer": Answer, "config": {"a": 1}}
    with pytest.raises(UsageError) as info:
        resolve_schema("Answr", ns)
    assert "Out" not in str(info.value)
    assert "Answer" in str(info.value)
    empty = {"Out": {}, "Answer": Answer}
    with pytest.raises(UsageError) as info:
        resolve_schema("nothing", empty)
    assert "Out" not in str(info.value)


@pytest.mark.parametrize("ceiling", [True, False])
def test_a_boolean_ceiling_is_refused(rt: Coordinator, ceiling: bool) -> None:
    with pytest.raises(InvalidCeilingError, match="must be a number"):
        rt.budgets.set("wf-bool", ceiling=ceiling)
