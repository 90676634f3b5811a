"""The guarded parser: only arithmetic and whitelisted calls, with size limits."""

from __future__ import annotations

import pytest
import sympy
from coreason_runtime._exceptions import CacheError, ExpressionParseError, ExpressionTooLargeError
from coreason_runtime.cache import Limits, safe_parse


@pytest.mark.parametrize(
    "text",
    [
        "x.__class__",
        "__import__('os')",
        "lambda x: x",
        "(1).real",
        "x if y else z",
        "[x for x in y]",
        "{1: 2}",
        "x; y",
        "a == b",
        "a < b",
    ],
)
def test_forbidden_syntax_is_rejected_before_parsing(text: str) -> None:
    with pytest.raises(ExpressionParseError):
        safe_parse(text)


@pytest.mark.parametrize("text", ["x**2 -", "sin(", ")(", "", "   ", "x\ny"])
def test_unparsable_text_raises_a_typed_error(text: str) -> None:
    with pytest.raises(ExpressionParseError):
        safe_parse(text)


def test_parse_errors_are_cache_errors_and_value_errors() -> None:
    with pytest.raises(CacheError):
        safe_parse("x +* ")
    with pytest.raises(ValueError):
        safe_parse("x +* ")


def test_unknown_names_become_symbols_and_functions_not_python_objects() -> None:
    expr = safe_parse("open(x) + eval")
    assert isinstance(expr.free_symbols.pop(), sympy.Symbol)
    assert {type(a).__name__ for a in expr.atoms(sympy.Function)} == {"open"}


def test_implicit_products_are_made_explicit() -> None:
    x = sympy.Symbol("x")
    parsed = safe_parse("2x + 3(x+1)(x-1)")
    assert sympy.expand(parsed - (2 * x + 3 * (x + 1) * (x - 1))) == 0


def test_a_name_before_parentheses_stays_a_call() -> None:
    assert isinstance(safe_parse("f(x+1)"), sympy.Function)


def test_single_equals_sign_is_an_equation() -> None:
    x = sympy.Symbol("x")
    assert safe_parse("x^2 = 4") == sympy.Eq(x**2, 4, evaluate=False)


def test_integrate_parses_to_an_unevaluated_integral() -> None:
    assert isinstance(safe_parse("integrate(sin(2x+1), x)"), sympy.Integral)


def test_power_towers_are_refused_without_being_computed() -> None:
    with pytest.raises(ExpressionTooLargeError, match="digits"):
        safe_parse("9**9**9**9")


def test_expansion_blowup_is_refused() -> None:
    with pytest.raises(ExpressionTooLargeError, match="terms"):
        safe_parse("(a+b+c+d+e)**60")


def test_long_text_is_refused_with_the_limit_named() -> None:
    with pytest.raises(ExpressionTooLargeError, match="max_chars"):
        safe_parse("x+" * 50 + "x", limits=Limits(max_chars=40))


def test_node_limit_applies_to_sympy_objects_too() -> None:
    from coreason_runtime.cache import canonicalize

    big = sympy.Add(*[sympy.Symbol(f"x{i}") ** 2 for i in range(300)])
    with pytest.raises(ExpressionTooLargeError, match="nodes"):
        canonicalize(big, limits=Limits(max_nodes=100))
