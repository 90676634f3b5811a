"""Normal forms and a fixed-order serialisation of SymPy expressions (the cache's text keys)."""

from __future__ import annotations

from typing import Any

import sympy
from sympy.core.function import AppliedUndef

__all__ = ["evaluated", "normal_form", "rationalize", "serialize"]


def serialize(expr: Any) -> str:
    """A deterministic text for ``expr``: ``Add``/``Mul`` arguments sorted, names verbatim."""
    if isinstance(expr, (tuple, list)):
        return "(" + ",".join(serialize(a) for a in expr) + ")"
    if isinstance(expr, sympy.Symbol):
        return str(expr.name)
    if isinstance(expr, (sympy.Integer, sympy.Rational)):
        return str(expr)
    if isinstance(expr, sympy.Float):
        return f"Float({expr!r})"
    if not isinstance(expr, sympy.Basic):
        return repr(expr)
    if not expr.args:
        return type(expr).__name__
    children = [serialize(a) for a in expr.args]
    if isinstance(expr, (sympy.Add, sympy.Mul)):
        children.sort()
    head = expr.func.__name__ if isinstance(expr, AppliedUndef) else type(expr).__name__
    return f"{head}({','.join(children)})"


def rationalize(expr: sympy.Basic) -> sympy.Basic:
    """``expr`` with every float replaced by the rational it prints as (``0.5`` → ``1/2``)."""
    floats = expr.atoms(sympy.Float)
    if not floats:
        return expr
    return expr.xreplace({f: sympy.Rational(str(f)) for f in floats})


def _inner(expr: sympy.Basic) -> sympy.Basic:
    if expr.is_Atom:
        return expr
    if isinstance(expr, (sympy.Add, sympy.Mul)):
        return expr.func(*[_inner(a) for a in expr.args])
    if isinstance(expr, sympy.Pow):
        return sympy.Pow(_inner(expr.base), normal_form(expr.exp))
    if isinstance(expr, sympy.Tuple):
        return sympy.Tuple(*[normal_form(a) for a in expr.args])
    if isinstance(expr, (sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit, sympy.Derivative)):
        return expr.func(normal_form(expr.args[0]), *[_inner(a) for a in expr.args[1:]])
    return expr.func(*[normal_form(a) for a in expr.args])


def normal_form(expr: sympy.Basic) -> sympy.Basic:
    """``cancel(together(expand(e)))`` applied bottom-up, with floats made rational.

    ``exp(a+b)`` and ``log(a·b)`` are not split, so affine arguments stay visible.
    """
    if isinstance(expr, sympy.Tuple):
        return sympy.Tuple(*[normal_form(a) for a in expr.args])
    if isinstance(expr, sympy.Equality):
        return sympy.Eq(normal_form(expr.lhs - expr.rhs), 0, evaluate=False)
    if not isinstance(expr, sympy.Expr) or expr.is_Atom:
        return expr
    expr = _inner(rationalize(expr))
    try:
        expr = sympy.expand(expr, power_exp=False, log=False)
        # function applications become opaque symbols named by their own text, so that the
        # polynomial code cannot split ``exp(2x+1)`` into ``E·exp(x)²``
        if not any(
            p.exp.is_negative or not p.exp.is_Integer
            for p in expr.atoms(sympy.Pow)
            if p.exp.is_number
        ):
            return expr  # no denominators: the expanded form is already canonical
        apps = {a for a in expr.atoms(sympy.Function) if a.args}
        if apps:
            hide = {a: sympy.Symbol("$app:" + serialize(a)) for a in apps}
            expr = sympy.cancel(sympy.together(expr.xreplace(hide)))
            expr = expr.xreplace({v: k for k, v in hide.items()})
        else:
            expr = sympy.cancel(sympy.together(expr))
    except (sympy.PolynomialError, TypeError, ValueError, NotImplementedError):
        # cancel refuses some non-commutative or piecewise inputs; expand alone is still a
        # deterministic form
        pass
    return expr


def evaluated(expr: sympy.Basic) -> sympy.Basic:
    """Rebuild an ``evaluate=False`` tree bottom-up so that Add/Mul/Pow simplify themselves."""
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[evaluated(a) for a in expr.args])
