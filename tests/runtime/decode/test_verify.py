"""Verifiers find the wrong step and map it to the tokens that hold it."""

from __future__ import annotations

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import VerifierError
from coreason_runtime.decode import (
    DecodeEngine,
    DecodeSession,
    SchemaVerifier,
    SympyVerifier,
    UnitsVerifier,
    Verdict,
    locate_failures,
)

from tests.runtime.decode.conftest import assert_consistent


def _only(verdict: Verdict) -> tuple[str, str]:
    assert len(verdict.failures) == 1
    f = verdict.failures[0]
    return f.kind, f.claim


def test_correct_calculus_passes() -> None:
    text = (
        "d/dx (x^3 + 2x) = 3x^2 + 2\n∫ 2x dx = x^2 + C\nsimplify (x^2-1)/(x-1) = x + 1\n"
        "solve x^2 - 4 = 0: x = 2, x = -2\nf(x) = sin(x)\nf'(x) = cos(x)\n"
    )
    verdict = SympyVerifier().check(text)
    assert verdict.ok and verdict.checked == 5


@pytest.mark.parametrize(
    ("text", "kind", "claim"),
    [
        ("d/dx x^3 = 2x^2", "derivative", "2x^2"),
        ("∫ cos(x) dx = -sin(x) + C", "integral", "-sin(x) + C"),
        ("simplify: (x+1)^2 = x^2 + 1", "simplify", "x^2 + 1"),
        ("solve x^2 - 9 = 0: x = 3", "solve", "x = 3"),
        ("g(x) = x^2\ng'(x) = x", "derivative", "x"),
    ],
)
def test_wrong_step_is_found(text: str, kind: str, claim: str) -> None:
    assert _only(SympyVerifier().check(text)) == (kind, claim)


def test_failure_offsets_point_at_the_claim() -> None:
    text = "Step 1: d/dx x^2 = 2x\nStep 2: d/dx sin(x) = -cos(x).\n"
    f = SympyVerifier().check(text).failures[0]
    assert f.step == 1 and text[f.start : f.end] == "-cos(x)" and f.expected == "cos(x)"


def test_lines_with_thunks_are_reported_as_needed() -> None:
    verdict = SympyVerifier().check("d/dx x^2 = ⟦dx2(x^2)⟧\n")
    assert verdict.needs == ["dx2"] and verdict.checked == 0


def test_units_mismatch_is_found() -> None:
    verdict = UnitsVerifier().check("F = 2 kg * 3 m/s^2 = 6 N\nE = 3 J = 3 kg\n")
    assert verdict.checked == 2
    assert _only(verdict) == ("units", "3 kg")


def test_units_magnitude_error_is_found() -> None:
    assert _only(UnitsVerifier().check("d = 2 km = 200 m\n")) == ("units", "200 m")


def test_schema_error_points_at_the_value() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    text = 'Result:\n{"n": "seven"}\n'
    f = SchemaVerifier(schema).check(text).failures[0]
    assert text[f.start : f.end] == '"seven"' and f.step == 1


def test_invalid_json_is_a_failure() -> None:
    verdict = SchemaVerifier({"type": "object"}).check('{"a": 1,, }')
    assert verdict.failures[0].kind == "json"


@pytest.fixture
def worked(engine: DecodeEngine) -> DecodeSession:
    s = engine.session("Differentiate.", max_new_tokens=4)
    s.run(max_steps=1)
    s.pause()
    s.inject("d/dx x^2 = 2x\nd/dx x^3 = 2x^3\n")
    return s


def test_failure_is_mapped_to_a_token_span(worked: DecodeSession, bus: EventBus) -> None:
    _, failures = locate_failures(worked, SympyVerifier())
    f = failures[0]
    assert worked.engine.text.text(worked.tokens[f.token_start : f.token_end]).strip() == "2x^3"
    event = bus.history([EventType.VERIFIER_FAILED])[-1]
    assert (event.data.start, event.data.end) == (f.token_start, f.token_end)


def test_verifier_that_raises_is_a_verifier_error(worked: DecodeSession) -> None:
    class Broken:
        name = "broken"

        def check(self, text: str) -> Verdict:
            raise ZeroDivisionError("boom")

    before = worked.tokens
    with pytest.raises(VerifierError):
        locate_failures(worked, Broken())
    assert worked.tokens == before
    assert_consistent(worked)
