"""Built-in verifiers: exact with SymPy where it decides, numeric spot checks labelled as such."""

from __future__ import annotations

import pytest
from coreason_runtime import RequestError
from coreason_runtime import verifiers as V
from coreason_runtime.verify import Failure, run_checks
from pydantic import BaseModel


def _verdict(check: V.Check, value: object) -> tuple[list[Failure], dict[str, str]]:
    verdict = run_checks([check], value, timeout=10)
    return verdict.failures, verdict.methods


def test_a_right_derivative_passes_exactly() -> None:
    failures, methods = _verdict(
        V.derivative(of="x**3 + 2*x", result="derivative"), {"derivative": "3x^2 + 2"}
    )
    assert failures == []
    assert methods == {"derivative(/derivative)": "sympy"}


def test_a_wrong_derivative_names_its_field_and_the_expected_value() -> None:
    failures, _ = _verdict(V.derivative(of="x**3", result="d"), {"d": "3x^2*ln(x)"})
    (f,) = failures
    assert (f.pointer, f.verifier, f.expected) == ("/d", "derivative(/d)", "3*x**2")
    assert "3*x**2*log(x)" in f.message


def test_sympy_that_cannot_decide_falls_back_to_labelled_spot_checks() -> None:
    # simplify(a - b) leaves a non-constant expression: SymPy cannot prove it nonzero
    failures, methods = _verdict(V.derivative(of="x**3", result="d"), {"d": "3x^2*ln(x)"})
    assert failures[0].method == "numeric"
    assert methods == {"derivative(/d)": "numeric"}


def test_the_right_hand_side_of_an_equation_is_the_claim() -> None:
    assert _verdict(V.derivative(of="sin(x)", result="d"), {"d": "f'(x) = cos(x)"})[0] == []


def test_inputs_may_be_fields_of_the_value() -> None:
    check = V.derivative(of="expression", wrt="variable", result="derivative")
    value = {"expression": "x*y**2", "variable": "y", "derivative": "2*x*y"}
    assert _verdict(check, value)[0] == []
    assert check.reads == frozenset({"/expression", "/variable", "/derivative"})


def test_an_unreadable_input_field_is_blamed_not_the_result() -> None:
    check = V.derivative(of="function", result="derivative")
    (f,) = _verdict(check, {"function": "the cube of x", "derivative": "3*x**2"})[0]
    assert f.pointer == "/function"


def test_a_pydantic_value_is_read_as_json() -> None:
    class Answer(BaseModel):
        derivative: str

    assert _verdict(V.derivative(of="x**2", result="derivative"), Answer(derivative="2x"))[0] == []


def test_a_literal_that_is_no_expression_fails_at_construction() -> None:
    with pytest.raises(RequestError, match="neither a field name nor an expression"):
        V.derivative(of="x**", result="d")


def test_an_antiderivative_is_checked_by_differentiating_it() -> None:
    check = V.antiderivative(of="2*x*cos(x**2)", result="F")
    assert _verdict(check, {"F": "sin(x^2) + 7"})[0] == []
    assert _verdict(check, {"F": "cos(x^2)"})[0][0].pointer == "/F"


def test_roots_are_substituted_back_and_none_may_be_missing() -> None:
    check = V.roots(of="x**2 - 5*x + 6", result="roots")
    assert _verdict(check, {"roots": [3, 2]})[0] == []
    assert _verdict(check, {"roots": "x = 2 or x = 3"})[0] == []
    assert "expected [2, 3]" in _verdict(check, {"roots": [2]})[0][0].message
    assert _verdict(check, {"roots": [2, 4]})[0] != []


def test_eigenvalues_are_roots_of_the_characteristic_polynomial() -> None:
    check = V.eigenvalues(matrix=[[2, 1], [1, 2]], result="eig")
    assert _verdict(check, {"eig": ["1", "3"]})[0] == []
    assert _verdict(check, {"eig": ["2", "2"]})[0] != []
    matrix_field = V.eigenvalues(matrix="m", result="eig")
    assert _verdict(matrix_field, {"m": [[4, 0], [0, 5]], "eig": [5, 4]})[0] == []


def test_a_limit_at_a_point_and_at_infinity() -> None:
    assert _verdict(V.limit(of="sin(x)/x", at=0, result="L"), {"L": "1"})[0] == []
    assert _verdict(V.limit(of="(2*x+1)/x", at="oo", result="L"), {"L": 2})[0] == []
    assert _verdict(V.limit(of="1/x**2", at=0, result="L"), {"L": "oo"})[0] == []
    assert _verdict(V.limit(of="1/x**2", at=0, result="L"), {"L": "0"})[0] != []


def test_equivalence_of_two_expressions() -> None:
    assert _verdict(V.equivalent("r", "sin(x)**2 + cos(x)**2"), {"r": "1"})[0] == []
    assert _verdict(V.equivalent("r", "(x+1)**2"), {"r": "x^2 + 1"})[0] != []


def test_units_check_dimension_and_magnitude_with_pint() -> None:
    check = V.units(result="energy", unit="J", equals="0.5 * 2 kg * (3 m/s)**2")
    assert _verdict(check, {"energy": "9 J"}) == ([], {"units(/energy)": "pint"})
    assert _verdict(check, {"energy": "9000 mJ"})[0] == []
    assert _verdict(check, {"energy": 9.0})[0] == []  # a number is read in the unit
    assert "dimension" in _verdict(check, {"energy": "9 N"})[0][0].message
    assert "expected 9 J" in _verdict(check, {"energy": "8 J"})[0][0].message
    for unreadable in ("9 (J", "s2/{]m^", "1*5^6e8", "1/0 J"):  # each once escaped pint
        assert "cannot read" in _verdict(check, {"energy": unreadable})[0][0].message


def test_a_declared_invariant_over_fields() -> None:
    check = V.invariant("total == a + b")
    assert _verdict(check, {"a": 2, "b": 3, "total": 5})[0] == []
    (f,) = _verdict(check, {"a": 2, "b": 3, "total": 6})[0]
    assert f.pointer == "/total"
    ordered = V.invariant("energy >= 0", blame="energy")
    assert _verdict(ordered, {"energy": -1})[0][0].pointer == "/energy"


def test_checks_compute_the_field_they_judge() -> None:
    assert str(V.derivative(of="x**3", result="d").produce({}, "/d")) == "3*x**2"
    assert V.derivative(of="x**3", result="d").produce({}, "/other") is None
    assert V.roots(of="x**2 - 1", result="r").produce({}, "/r") == [-1, 1]
    units = V.units(result="e", unit="J", equals="0.5 * 2 kg * (3 m/s)**2")
    assert str(units.produce({}, "/e")) == "9 J"


def test_the_verifiers_module_exports_exactly_its_public_names() -> None:
    import types

    public = {
        n
        for n, v in vars(V).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations", "Any", "Callable"}
    assert set(V.__all__) == public


def test_the_request_path_imports_no_sympy() -> None:
    import json
    import subprocess
    import sys

    code = (
        "import sys, json, coreason_runtime.tensor._router, coreason_runtime.verify._driver\n"
        "print(json.dumps('sympy' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
