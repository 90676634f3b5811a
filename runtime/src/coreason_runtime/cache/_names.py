"""Canonical names for a subgoal's symbols and functions, so that renamed variants coincide.

Free symbols become ``$v0, $v1, …`` in an order fixed by a name-free signature (the normal form
with that symbol marked and every other symbol blurred); ties are broken by trying every
permutation (bounded) and keeping the smallest text. Undefined functions become ``$F0, …`` the
same way, and bound variables ``$b0, …``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy
from sympy.core.function import AppliedUndef

from coreason_runtime.cache._normal import normal_form, serialize

__all__ = ["Naming", "name_canonically"]

_MAX_PERMUTATIONS = 120
_MARK = sympy.Symbol("$mark")
_OTHER = sympy.Symbol("$other")
_MARK_F = sympy.Function("$markf")
_OTHER_F = sympy.Function("$otherf")


@dataclass(frozen=True)
class Naming:
    """A subgoal renamed: its text, body and parts in canonical names, and the renamings.

    ``sign`` is -1 when the body was negated to normalise its sign. ``bound``, ``symbols`` and
    ``functions`` map the user's bound variables, free symbols and undefined functions to
    their canonical names (bound variables in the order they were found).
    """

    text: str
    body: sympy.Basic
    parts: list[Any]
    sign: sympy.Integer
    bound: dict[sympy.Symbol, sympy.Symbol]
    symbols: dict[sympy.Symbol, sympy.Symbol]
    functions: dict[Any, Any]


def name_canonically(
    kind: str, body: sympy.Basic, parts: list[Any], bound: sympy.Symbol | None, *, signed: bool
) -> Naming:
    """Rename to canonical names, trying tie orders; with ``signed``, normalise the sign."""
    whole = sympy.Tuple(
        body, *[sympy.Tuple(*p) if isinstance(p, (tuple, list)) else p for p in parts]
    )
    b_map = {s: sympy.Symbol(f"$b{i}") for i, s in enumerate(_bound_symbols(kind, parts, bound))}
    text, cand, s_map, f_map = _smallest(whole.xreplace(b_map))
    sign = sympy.Integer(1)
    if signed and isinstance(cand.args[0], sympy.Expr):
        neg = sympy.Tuple(normal_form(-cand.args[0]), *cand.args[1:])
        neg_text = serialize(neg)
        if (bool(neg.args[0].could_extract_minus_sign()), neg_text) < (
            bool(cand.args[0].could_extract_minus_sign()),
            text,
        ):
            text, cand, sign = neg_text, neg, sympy.Integer(-1)
    return Naming(text, cand.args[0], list(cand.args[1:]), sign, b_map, s_map, f_map)


def _bound_symbols(kind: str, parts: list[Any], bound: sympy.Symbol | None) -> list[sympy.Symbol]:
    """The bound variable, then (multi-variable derivatives and integrals) every other one."""
    out: list[sympy.Symbol] = [] if bound is None else [bound]
    if kind not in ("integral", "derivative", "sum"):
        return out
    for p in parts:
        head = p[0] if isinstance(p, (tuple, list, sympy.Tuple)) else p
        if isinstance(head, sympy.Symbol) and head not in out:
            out.append(head)
    return out


def _smallest(
    whole: sympy.Tuple,
) -> tuple[str, sympy.Tuple, dict[Any, Any], dict[Any, Any]]:
    """The naming of free symbols and functions whose text is smallest, among the tie orders."""
    free = sorted(
        (
            s
            for s in whole.free_symbols
            if isinstance(s, sympy.Symbol) and not s.name.startswith("$")
        ),
        key=str,
    )
    funcs = sorted({a.func for a in whole.atoms(AppliedUndef)}, key=str)
    sym_groups = _ordered(free, lambda s: _symbol_signature(whole, s, free))
    fun_groups = _ordered(funcs, lambda f: _function_signature(whole, f, funcs))
    best: tuple[str, sympy.Tuple, dict[Any, Any], dict[Any, Any]] | None = None
    for sym_order in _orderings(sym_groups):
        for fun_order in _orderings(fun_groups):
            s_map = {s: sympy.Symbol(f"$v{i}") for i, s in enumerate(sym_order)}
            f_map = {f: sympy.Function(f"$F{i}") for i, f in enumerate(fun_order)}
            cand = whole.xreplace(s_map)
            for f, g in f_map.items():
                cand = cand.replace(f, g)
            cand = sympy.Tuple(normal_form(cand.args[0]), *cand.args[1:])
            text = serialize(cand)
            if best is None or text < best[0]:
                best = (text, cand, s_map, f_map)
    assert best is not None
    return best


def _symbol_signature(body: sympy.Basic, s: sympy.Symbol, others: list[sympy.Symbol]) -> str:
    repl = {o: _OTHER for o in others if o != s}
    repl[s] = _MARK
    return serialize(normal_form(body.xreplace(repl)))


def _function_signature(body: sympy.Basic, f: Any, others: list[Any]) -> str:
    out = body
    for o in others:
        if o != f:
            out = out.replace(o, _OTHER_F)
    return serialize(normal_form(out.replace(f, _MARK_F)))


def _ordered(items: list[Any], signature: Callable[[Any], str]) -> list[list[Any]]:
    """Group ``items`` by signature (sorted); each group is a tie to break."""
    sigs = {item: signature(item) for item in items}
    groups: dict[str, list[Any]] = {}
    for item in sorted(items, key=lambda i: (sigs[i], str(i))):
        groups.setdefault(sigs[item], []).append(item)
    return [groups[k] for k in sorted(groups)]


def _orderings(groups: list[list[Any]]) -> list[list[Any]]:
    total = math.prod(math.factorial(len(g)) for g in groups)
    if total > _MAX_PERMUTATIONS:
        return [[i for g in groups for i in g]]
    per_group = [list(itertools.permutations(g)) for g in groups]
    return [[i for perm in combo for i in perm] for combo in itertools.product(*per_group)]
