"""Guarded parsing of user text into SymPy expressions: no eval of arbitrary code, size limits."""

from __future__ import annotations

import io
import itertools
import keyword
import math
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy
from sympy.parsing.sympy_parser import (
    auto_number,
    auto_symbol,
    convert_xor,
    parse_expr,
    repeated_decimals,
)

from coreason_runtime._exceptions import ExpressionParseError, ExpressionTooLargeError

__all__ = ["Limits", "check_size", "safe_parse"]

_TRANSFORMATIONS = (auto_symbol, repeated_decimals, auto_number, convert_xor)
_ALLOWED_OPS = frozenset({"+", "-", "*", "**", "/", "^", "(", ")", ","})

# Names a user may call. Integration, differentiation, limits and sums map to their
# *unevaluated* classes so that parsing never starts a computation.
_FUNCTIONS: dict[str, Any] = {
    name: getattr(sympy, name)
    for name in (
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "asin",
        "acos",
        "atan",
        "acot",
        "atan2",
        "sinh",
        "cosh",
        "tanh",
        "coth",
        "asinh",
        "acosh",
        "atanh",
        "exp",
        "log",
        "sqrt",
        "Abs",
        "sign",
        "erf",
        "erfc",
        "re",
        "im",
        "conjugate",
        "floor",
        "ceiling",
        "Integral",
        "Derivative",
        "Limit",
        "Sum",
        "Product",
        "Eq",
        "Rational",
        "Integer",
        "Float",
        "Symbol",
        "Function",
        "pi",
        "E",
        "I",
        "oo",
        "zoo",
        "nan",
        "Add",
        "Mul",
        "Pow",
        "Tuple",
        "Mod",
        "Not",
        "And",
        "Or",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
    )
}
_FUNCTIONS.update(
    {
        "integrate": sympy.Integral,
        "diff": sympy.Derivative,
        "limit": sympy.Limit,
        "summation": sympy.Sum,
        "ln": sympy.log,
        "abs": sympy.Abs,
        "e": sympy.E,
        "inf": sympy.oo,
    }
)


@dataclass(frozen=True)
class Limits:
    """Size limits applied to every expression before any rewriting.

    ``max_chars``: length of the source text; ``max_nodes``: nodes of the parsed tree;
    ``max_terms``: estimated number of terms after full expansion; ``max_digits``: decimal
    digits of any number the expression would evaluate to (stops ``9**9**9**9``).
    """

    max_chars: int = 4_000
    max_nodes: int = 4_000
    max_terms: int = 20_000
    max_digits: int = 2_000


DEFAULT_LIMITS = Limits()


def _check_tokens(text: str) -> str:
    """Reject forbidden tokens; return the text with implicit products (``2x``) made explicit."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        msg = f"cannot tokenize expression {text[:80]!r}: {e}"
        raise ExpressionParseError(msg) from e
    for tok in tokens:
        if tok.type in (
            tokenize.NEWLINE,
            tokenize.NL,
            tokenize.ENDMARKER,
            tokenize.NUMBER,
            tokenize.INDENT,
            tokenize.DEDENT,
        ):
            continue
        if tok.type == tokenize.NAME:
            if keyword.iskeyword(tok.string) or "__" in tok.string:
                msg = f"name {tok.string!r} is not allowed in an expression"
                raise ExpressionParseError(msg)
            continue
        if tok.type == tokenize.OP and tok.string in _ALLOWED_OPS:
            continue
        msg = f"token {tok.string!r} is not allowed in an expression (only arithmetic, calls)"
        raise ExpressionParseError(msg)
    # ``2x``, ``2(x+1)``, ``(a)(b)`` and ``(a)x`` are products; ``f(x)`` stays a call.
    inserts: list[int] = []
    lines = text.splitlines() or [""]
    if len(lines) > 1:
        msg = "an expression must be a single line"
        raise ExpressionParseError(msg)
    meaningful = [t for t in tokens if t.type in (tokenize.NAME, tokenize.NUMBER, tokenize.OP)]
    for left, right in itertools.pairwise(meaningful):
        left_ends_value = left.type == tokenize.NUMBER or left.string == ")"
        right_starts_value = right.type in (tokenize.NAME, tokenize.NUMBER) or right.string == "("
        if left_ends_value and right_starts_value:
            inserts.append(right.start[1])
    out = text
    for col in reversed(inserts):
        out = out[:col] + "*" + out[col:]
    return out


def _log10_abs(e: sympy.Basic, limits: Limits) -> float:
    """Estimated log10 of |e| for a symbol-free subtree, raising when it is astronomically big."""
    if isinstance(e, sympy.Integer):
        n = abs(int(e))
        return math.log10(n) if n else -math.inf
    if isinstance(e, sympy.Rational):
        return math.log10(abs(e.p)) - math.log10(e.q) if e.p else -math.inf
    if isinstance(e, sympy.Number):
        try:
            v = abs(float(e))
        except (OverflowError, TypeError, ValueError):
            return math.inf
        return math.log10(v) if v else -math.inf
    if isinstance(e, sympy.Add):
        return max(_log10_abs(a, limits) for a in e.args) + math.log10(len(e.args))
    if isinstance(e, sympy.Mul):
        return sum(_log10_abs(a, limits) for a in e.args)
    if isinstance(e, sympy.Pow):
        lb = _log10_abs(e.base, limits)
        le = _log10_abs(e.exp, limits)
        exp_value = math.inf if le > 300 else 10.0**le
        return lb * exp_value if lb > 0 else 0.0
    return 0.0


def _estimate_terms(e: sympy.Basic) -> float:
    if isinstance(e, sympy.Add):
        return float(sum(_estimate_terms(a) for a in e.args))
    if isinstance(e, sympy.Mul):
        out = 1.0
        for a in e.args:
            out *= _estimate_terms(a)
        return out
    if isinstance(e, sympy.Pow) and isinstance(e.exp, sympy.Integer) and e.exp > 1:
        n = _estimate_terms(e.base)
        k = int(e.exp)
        if n <= 1:
            return 1.0
        if k > 10_000:
            return math.inf
        return float(math.comb(int(min(n, 10_000)) + k - 1, k)) if n < 10_000 else math.inf
    return 1.0


def check_size(expr: sympy.Basic, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise :class:`ExpressionTooLargeError` if ``expr`` is over any of ``limits``."""
    for nodes, node in enumerate(sympy.preorder_traversal(expr), start=1):
        if nodes > limits.max_nodes:
            msg = f"expression has more than {limits.max_nodes} nodes (Limits.max_nodes)"
            raise ExpressionTooLargeError(msg)
        if isinstance(node, sympy.Pow) and not node.free_symbols:
            digits = _log10_abs(node, limits)
            if digits > limits.max_digits:
                msg = (
                    f"a number in the expression has about {digits:.3g} digits, over "
                    f"Limits.max_digits={limits.max_digits}"
                )
                raise ExpressionTooLargeError(msg)
        if (
            isinstance(node, sympy.Pow)
            and isinstance(node.exp, sympy.Integer)
            and abs(int(node.exp)) > 10 * limits.max_digits
        ):
            msg = f"exponent {node.exp} is over the limit {10 * limits.max_digits}"
            raise ExpressionTooLargeError(msg)
    terms = _estimate_terms(expr)
    if terms > limits.max_terms:
        msg = (
            f"expanding the expression would give about {terms:.3g} terms, over "
            f"Limits.max_terms={limits.max_terms}"
        )
        raise ExpressionTooLargeError(msg)


def safe_parse(
    text: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    local: Mapping[str, Any] | None = None,
) -> sympy.Basic:
    """Parse ``text`` into an expression without running arbitrary Python.

    The text is tokenized first and rejected if it holds anything but numbers, names,
    arithmetic operators, parentheses and commas (no attribute access, no dunder names, no
    keywords, no strings, no brackets). SymPy's ``parse_expr`` then runs with an empty
    ``__builtins__`` and a global dict of whitelisted functions only, and with
    ``evaluate=False`` so that nothing is computed before the size limits are checked.
    ``a = b`` (a single ``=``) parses as an equation ``Eq(a, b)``.

    Raises
    ------
    ExpressionParseError
        The text is not an expression SymPy can parse, or uses forbidden syntax.
    ExpressionTooLargeError
        The text or the expression is over ``limits``.
    """
    if not isinstance(text, str):
        msg = f"expected a string expression, got {type(text).__name__}"
        raise ExpressionParseError(msg)
    if len(text) > limits.max_chars:
        msg = (
            f"expression text has {len(text)} characters, over Limits.max_chars={limits.max_chars}"
        )
        raise ExpressionTooLargeError(msg)
    stripped = text.strip()
    if not stripped:
        msg = "empty expression"
        raise ExpressionParseError(msg)
    sides = stripped.split("=")
    if len(sides) > 2 or any(ch in stripped for ch in "<>!"):
        msg = f"only a single '=' (an equation) is allowed: {stripped[:80]!r}"
        raise ExpressionParseError(msg)
    parsed = [_parse_one(side, limits, local) for side in sides]
    expr = parsed[0] if len(parsed) == 1 else sympy.Eq(parsed[0], parsed[1], evaluate=False)
    check_size(expr, limits)
    return expr


def _parse_one(text: str, limits: Limits, local: Mapping[str, Any] | None) -> sympy.Basic:
    text = _check_tokens(text)
    global_dict: dict[str, Any] = {"__builtins__": {}}
    global_dict.update(_FUNCTIONS)
    try:
        expr = parse_expr(
            text,
            local_dict=dict(local or {}),
            global_dict=global_dict,
            transformations=_TRANSFORMATIONS,
            evaluate=False,
        )
    except ExpressionTooLargeError:
        raise
    except (
        SyntaxError,
        TypeError,
        ValueError,
        AttributeError,
        NameError,
        ZeroDivisionError,
        RecursionError,
        sympy.SympifyError,
    ) as e:
        msg = f"SymPy cannot parse {text.strip()[:80]!r}: {type(e).__name__}: {e}"
        raise ExpressionParseError(msg) from e
    if not isinstance(expr, sympy.Basic):
        msg = f"{text.strip()[:80]!r} is not an expression (parsed to {type(expr).__name__})"
        raise ExpressionParseError(msg)
    return expr
