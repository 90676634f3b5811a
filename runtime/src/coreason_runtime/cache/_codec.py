"""Exact, safe JSON trees for SymPy expressions: classes are looked up by name, never eval'd."""

from __future__ import annotations

import functools
from typing import Any

import sympy
from sympy.core.function import AppliedUndef

from coreason_runtime._exceptions import CacheError

__all__ = ["from_tree", "to_tree"]


@functools.cache
def _registry() -> dict[str, type]:
    import sympy.functions.elementary.piecewise as pw

    out: dict[str, type] = {}
    for mod in (sympy, sympy.core.numbers, sympy.functions, pw):
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, sympy.Basic):
                out.setdefault(name, obj)
    return out


def to_tree(expr: Any) -> Any:
    """A JSON-able tree for ``expr`` (SymPy objects, lists, tuples, dicts of them)."""
    if isinstance(expr, dict):
        return ["@dict", [[to_tree(k), to_tree(v)] for k, v in expr.items()]]
    if isinstance(expr, (list, tuple)):
        return ["@list", [to_tree(a) for a in expr]]
    if isinstance(expr, (int, float, str, bool)) and not isinstance(expr, sympy.Basic):
        expr = sympy.sympify(expr)
    if isinstance(expr, sympy.Symbol):
        return ["@sym", expr.name]
    if isinstance(expr, sympy.Integer):
        return ["@int", str(expr)]
    if isinstance(expr, sympy.Rational):
        return ["@rat", str(expr.p), str(expr.q)]
    if isinstance(expr, sympy.Float):
        return ["@float", str(expr), int(expr._prec)]
    if isinstance(expr, AppliedUndef):
        return ["@undef", expr.func.__name__, [to_tree(a) for a in expr.args]]
    if not isinstance(expr, sympy.Basic):
        msg = f"cannot encode a {type(expr).__name__} in a cache entry"
        raise CacheError(msg)
    name = type(expr).__name__
    if not expr.args:
        if getattr(sympy.S, name, None) is expr:
            return ["@S", name]
        msg = f"cannot encode the atom {expr!r} in a cache entry"
        raise CacheError(msg)
    return [name, [to_tree(a) for a in expr.args]]


def from_tree(tree: Any) -> Any:
    """Rebuild what :func:`to_tree` encoded. Raises :class:`CacheError` on anything else."""
    try:
        tag = tree[0]
        if tag == "@dict":
            return {from_tree(k): from_tree(v) for k, v in tree[1]}
        if tag == "@list":
            return [from_tree(a) for a in tree[1]]
        if tag == "@sym":
            return sympy.Symbol(str(tree[1]))
        if tag == "@int":
            return sympy.Integer(str(tree[1]))
        if tag == "@rat":
            return sympy.Rational(int(tree[1]), int(tree[2]))
        if tag == "@float":
            return sympy.Float(str(tree[1]), precision=int(tree[2]))
        if tag == "@undef":
            return sympy.Function(str(tree[1]))(*[from_tree(a) for a in tree[2]])
        if tag == "@S":
            singleton = getattr(sympy.S, str(tree[1]))
            if not isinstance(singleton, sympy.Basic):
                raise TypeError(tree[1])
            return singleton
        cls = _registry().get(str(tag))
        if cls is None:
            msg = f"unknown SymPy class {tag!r} in a cache entry"
            raise CacheError(msg)
        args = [from_tree(a) for a in tree[1]]
        if cls in (sympy.Add, sympy.Mul, sympy.Pow):
            # rebuilt exactly as stored: 2*(3*x**2 + 1) must not be distributed again
            return cls(*args, evaluate=False)
        return cls(*args)
    except CacheError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        msg = f"corrupt expression tree in a cache entry: {e}"
        raise CacheError(msg) from e


def form_to_tree(form: Any) -> dict[str, Any]:
    """A :class:`CanonicalForm` (without ``original``) as JSON-able data."""
    return {
        "kind": form.kind,
        "op": form.op,
        "text": form.text,
        "key": form.key,
        "scale": to_tree(form.scale),
        "expr": to_tree(form.expr),
        "back": [[to_tree(k), to_tree(v)] for k, v in form.back.items()],
        "forward": [[to_tree(k), to_tree(v)] for k, v in form.forward.items()],
        "functions_back": {k: v.__name__ for k, v in form.functions_back.items()},
        "functions_forward": {k: v.__name__ for k, v in form.functions_forward.items()},
        "substitution": form.substitution,
    }


def form_from_tree(data: dict[str, Any], original: Any) -> Any:
    """Rebuild a :class:`CanonicalForm` for ``original`` from :func:`form_to_tree` data."""
    from coreason_runtime.cache._canonical import CanonicalForm

    try:
        return CanonicalForm(
            kind=str(data["kind"]),
            op=str(data["op"]),
            text=str(data["text"]),
            key=str(data["key"]),
            scale=from_tree(data["scale"]),
            expr=from_tree(data["expr"]),
            back={from_tree(k): from_tree(v) for k, v in data["back"]},
            forward={from_tree(k): from_tree(v) for k, v in data["forward"]},
            functions_back={
                str(k): sympy.Function(str(v)) for k, v in data["functions_back"].items()
            },
            functions_forward={
                str(k): sympy.Function(str(v)) for k, v in data["functions_forward"].items()
            },
            substitution=str(data["substitution"]),
            original=original,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        msg = f"corrupt canonical-form alias: {e}"
        raise CacheError(msg) from e
