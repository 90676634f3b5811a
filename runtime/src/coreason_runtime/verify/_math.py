"""Reading answers as SymPy expressions and comparing them: exact first, numeric as a fallback."""

from __future__ import annotations

import re
from typing import Any

import sympy

from coreason_runtime.cache._parse import safe_parse
from coreason_runtime.cache._verify import numeric_equal

__all__ = ["EXACT", "NUMERIC", "read_expr", "read_list", "same", "show"]

EXACT = "sympy"
NUMERIC = "numeric"

_INFINITY = {"oo": sympy.oo, "inf": sympy.oo, "infinity": sympy.oo, "∞": sympy.oo}
_SPLIT = re.compile(r"\s*(?:,|;|\bor\b|\band\b)\s*")
_LHS = re.compile(r"^\s*[A-Za-z_]\w*(?:'+|\s*\(\s*[A-Za-z_]\w*\s*\))?\s*=(?!=)")


def read_expr(text: Any) -> Any:
    """A SymPy expression from an answer: ``"3x^2"``, ``"f'(x) = 3*x**2"`` (the right-hand
    side is read), a number, ``"oo"``.

    Raises
    ------
    ValueError
        Not an expression (``ExpressionParseError`` and ``ExpressionTooLargeError`` are
        ``ValueError`` subclasses).
    """
    if isinstance(text, bool):
        msg = f"{text!r} is not an expression"
        raise ValueError(msg)
    if isinstance(text, (int, float)):
        return sympy.nsimplify(text) if isinstance(text, float) else sympy.Integer(text)
    if not isinstance(text, str):
        msg = f"expected an expression, got {type(text).__name__}"
        raise ValueError(msg)
    body = text.strip().rstrip(".")
    if "=" in body:  # "f'(x) = 3x^2", "y = 2": the claim is the right-hand side
        body = body.rsplit("=", 1)[1].strip()
    sign = ""
    if body.startswith("-") and body[1:].strip().lower() in _INFINITY:
        sign, body = "-", body[1:].strip()
    if body.lower() in _INFINITY:
        return -sympy.oo if sign else sympy.oo
    if not body:
        msg = f"{text!r} holds no expression"
        raise ValueError(msg)
    return safe_parse(body)


def read_list(value: Any) -> list[Any]:
    """Expressions from a list answer: a JSON list, or ``"x = 1, x = -2"``-style text."""
    if isinstance(value, list):
        return [read_expr(v) for v in value]
    if isinstance(value, str):
        parts = [_LHS.sub("", p).strip() for p in _SPLIT.split(value.strip().strip("[]{}()"))]
        return [read_expr(p) for p in parts if p]
    return [read_expr(value)]


def same(a: Any, b: Any) -> tuple[bool, str]:
    """Whether two expressions are equal, and how that was decided.

    Exact (``"sympy"``) when ``simplify(a - b)`` is 0 or a nonzero constant; otherwise SymPy
    could not decide, and agreement at random points (``"numeric"``) decides.
    """
    a, b = sympy.sympify(a), sympy.sympify(b)
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return bool(a == b), EXACT
    try:
        diff = sympy.simplify(sympy.expand(a - b))
    except (TypeError, ValueError, NotImplementedError, RecursionError):
        diff = None
    if diff is not None:
        if diff == 0:
            return True, EXACT
        if diff.is_number and diff.is_zero is False:
            return False, EXACT
    return numeric_equal(a, b), NUMERIC


def show(expr: Any) -> str:
    """An expression as text a model and a person both read (``3*x**2``)."""
    if isinstance(expr, (list, tuple)):
        return "[" + ", ".join(show(e) for e in expr) + "]"
    return str(expr)
