"""Canonical forms of SymPy subgoals, so renamed, reordered or rescaled variants share one key.

What is caught (each pair below gets the same key):

* **renamed variables** — free symbols are renamed ``$v0, $v1, …`` in an order fixed by a
  name-free signature (the normal form of the expression with that symbol marked and every
  other symbol blurred); ties are broken by trying every permutation (bounded) and keeping the
  smallest form. Undefined functions (``f``, ``g``) are renamed ``$F0, …`` the same way, and
  bound variables (integration, differentiation, limit and summation variables) ``$b0, …``.
* **commuted / regrouped terms, expanded vs factored, rational-function rewrites** — every
  expression goes through ``expand`` (without ``exp(a+b)`` or ``log`` splitting), then
  ``together`` and ``cancel``, bottom-up through function arguments, and is serialised with the
  arguments of ``Add`` and ``Mul`` sorted: a fixed term order independent of SymPy's.
* **rescaled problems** — a constant factor (rational content, and for integrals, derivatives,
  limits and sums any factor free of the bound variable) is pulled out and recorded as
  ``scale``; the sign is normalised the same way.
* **affine arguments** — when every occurrence of the bound variable ``x`` sits inside one
  affine expression ``a·x + b`` (``sin(2x+1)·exp(2x+1)``), ``∫ f(a·x+b) dx`` becomes
  ``(1/a)·∫ f(u) du`` and ``dⁿ/dxⁿ f(a·x+b)`` becomes ``aⁿ·f⁽ⁿ⁾(u)``; the substitution is
  recorded and :meth:`CanonicalForm.to_user` maps a cached result back. Sums are shifted so the
  index starts at 0.
* **equations** — ``l = r`` becomes the primitive numerator of ``l - r`` with a normalised
  sign, so ``2x = 4`` and ``x - 2 = 0`` coincide.
* **floats** — converted to the rational they print as (``0.5`` and ``1/2`` coincide).

What is *not* caught (these miss, they never produce a wrong hit):

* trigonometric, exponential and logarithmic identities (``sin²x + cos²x`` vs ``1``,
  ``exp(x)·exp(x)`` is caught by SymPy itself but ``log(x·y)`` vs ``log x + log y`` is not);
* affine arguments that differ between occurrences (``x·sin(2x)``), and shifted polynomial
  arguments once expanded (``(2x+1)³`` written so is caught, ``8x³+12x²+6x+1`` is not);
* symmetric renamings beyond the tie-break budget (more than 120 permutations), where the
  order falls back to the original names;
* equal definite integrals with different bounds, sums with symbolic lower bounds, integration
  by parts, and anything needing assumptions (``sqrt(x²)`` vs ``x``).

The key is ``sha256(op | kind | canonical text | verifier version)``, so a new verifier
invalidates every entry it would have checked.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy
from sympy.core.function import AppliedUndef

from coreason_runtime._exceptions import CacheError, ExpressionParseError
from coreason_runtime.cache._parse import DEFAULT_LIMITS, Limits, check_size, safe_parse

__all__ = ["CanonicalForm", "canonicalize", "normal_form", "serialize"]

_LINEAR_OPS = frozenset(
    {
        "simplify",
        "factor",
        "expand",
        "cancel",
        "together",
        "evaluate",
        "integrate",
        "diff",
        "limit",
        "sum",
    }
)
_DEFAULT_OP = {
    "integral": "integrate",
    "derivative": "diff",
    "limit": "limit",
    "sum": "sum",
    "equation": "solve",
    "expr": "simplify",
    "tuple": "request",
}
_MAX_PERMUTATIONS = 120
_MARK = sympy.Symbol("$mark")
_OTHER = sympy.Symbol("$other")
_MARK_F = sympy.Function("$markf")
_OTHER_F = sympy.Function("$otherf")


# --- serialisation with a fixed term order ------------------------------------------------------


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


# --- normal form -------------------------------------------------------------------------------


def _rationalize(expr: sympy.Basic) -> sympy.Basic:
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
    expr = _inner(_rationalize(expr))
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


def _evaluate(expr: sympy.Basic) -> sympy.Basic:
    """Rebuild an ``evaluate=False`` tree bottom-up so that Add/Mul/Pow simplify themselves."""
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_evaluate(a) for a in expr.args])


# --- the canonical form ------------------------------------------------------------------------


@dataclass(frozen=True)
class CanonicalForm:
    """A subgoal in canonical form, with the maps between the user's names and canonical ones.

    ``expr`` is the canonical problem (canonical names); ``text`` its serialisation; ``key``
    the content address. ``scale`` is the factor pulled out (user's names), ``back`` maps each
    canonical symbol to the user's expression for it (a bound ``$b0`` may map to ``2*x + 1``),
    ``forward`` maps the user's symbols to canonical expressions.
    """

    kind: str
    op: str
    expr: sympy.Basic
    text: str
    key: str
    scale: sympy.Expr = sympy.S.One
    back: Mapping[sympy.Basic, sympy.Basic] = field(default_factory=dict)
    forward: Mapping[sympy.Basic, sympy.Basic] = field(default_factory=dict)
    functions_back: Mapping[str, Any] = field(default_factory=dict)
    functions_forward: Mapping[str, Any] = field(default_factory=dict)
    substitution: str = ""
    original: sympy.Basic | None = None

    def to_user(self, result: sympy.Basic) -> sympy.Basic:
        """Map a result of the canonical problem back to the user's problem."""
        if self.op.startswith("step:"):
            # a proof step's result *is* its form (factored, expanded …): rename only
            with sympy.evaluate(False):
                out = result.xreplace(dict(self.back))
        else:
            out = result.xreplace(dict(self.back))
        for name, user_f in self.functions_back.items():
            out = out.replace(sympy.Function(name), user_f)
        if self.kind == "equation":
            return out
        return self.scale * out

    def to_canonical(self, result: sympy.Basic) -> sympy.Basic:
        """Map a result of the user's problem to the canonical problem (inverse of to_user)."""
        out = result if self.kind == "equation" else result / self.scale
        for name, canon_f in self.functions_forward.items():
            out = out.replace(sympy.Function(name), canon_f)
        if self.op.startswith("step:"):
            with sympy.evaluate(False):
                return out.xreplace(dict(self.forward))
        return out.xreplace(dict(self.forward))


def _content_and_factor(
    body: sympy.Expr, bound: sympy.Symbol | None, op: str
) -> tuple[sympy.Expr, sympy.Expr]:
    """Split ``body`` into ``scale * rest`` for ops that are linear in the body."""
    if op not in _LINEAR_OPS or body == 0:
        return sympy.Integer(1), body
    content, rest = body.as_content_primitive()
    scale: sympy.Expr = content
    if bound is not None and isinstance(rest, sympy.Mul):
        indep, dep = rest.as_independent(bound, as_Add=False)
        if indep != 1 and indep.is_finite is not False and indep != 0:
            scale, rest = scale * indep, dep
    return scale, rest


def _linear(expr: sympy.Basic, x: sympy.Symbol) -> tuple[sympy.Expr, sympy.Expr] | None:
    """``(a, b)`` when ``expr`` is syntactically ``a·x + b`` with ``a, b`` free of ``x``."""
    if expr == x:
        return sympy.S.One, sympy.S.Zero
    if x not in expr.free_symbols:
        return sympy.S.Zero, expr
    if isinstance(expr, sympy.Add):
        a_sum, b_sum = [], []
        for term in expr.args:
            lin = _linear(term, x)
            if lin is None:
                return None
            a_sum.append(lin[0])
            b_sum.append(lin[1])
        return sympy.Add(*a_sum), sympy.Add(*b_sum)
    if isinstance(expr, sympy.Mul):
        indep, dep = expr.as_independent(x, as_Add=False)
        return (indep, sympy.S.Zero) if dep == x else None
    return None


def _affine_sites(expr: sympy.Basic, x: sympy.Symbol) -> set[tuple[sympy.Expr, sympy.Expr]] | None:
    """Every maximal affine subexpression ``a·x + b`` holding ``x``."""
    if x not in expr.free_symbols:
        return set()
    lin = _linear(expr, x)
    if lin is not None and lin[0] != 0:
        return {lin}
    out: set[tuple[sympy.Expr, sympy.Expr]] = set()
    for arg in expr.args:
        sub = _affine_sites(arg, x)
        if sub is None:
            return None
        out |= sub
    return out


def _affine(body: sympy.Expr, x: sympy.Symbol) -> tuple[sympy.Expr, sympy.Expr] | None:
    sites = _affine_sites(body, x)
    if not sites or len(sites) != 1:
        return None
    a, b = next(iter(sites))
    if a == 1 and b == 0:
        return None
    return a, b


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


def _structure(expr: sympy.Basic, op: str) -> tuple[str, sympy.Expr, list[Any]]:
    """(kind, body, parts): the body is what gets normalised and scaled, parts the rest."""
    if isinstance(expr, sympy.Integral):
        if len(expr.limits) != 1:
            return "integral", expr.function, list(expr.limits)
        return "integral", expr.function, list(expr.limits[0])
    if isinstance(expr, sympy.Derivative):
        return "derivative", expr.expr, list(expr.variable_count)
    if isinstance(expr, sympy.Limit):
        z, z0, direction = expr.args[1:]
        return "limit", expr.args[0], [z, z0, sympy.Symbol(f"$dir{direction}")]
    if isinstance(expr, sympy.Sum) and len(expr.limits) == 1:
        return "sum", expr.function, list(expr.limits[0])
    if isinstance(expr, sympy.Equality):
        return "equation", expr.lhs - expr.rhs, []
    if op == "solve" and isinstance(expr, sympy.Expr):
        return "equation", expr, []
    if isinstance(expr, sympy.Expr):
        return "expr", expr, []
    if isinstance(expr, sympy.Tuple):
        return "tuple", expr, []
    msg = f"cannot canonicalise a {type(expr).__name__}"
    raise ExpressionParseError(msg)


def canonicalize(
    problem: str | sympy.Basic,
    op: str | None = None,
    *,
    verifier_version: str = "",
    limits: Limits = DEFAULT_LIMITS,
) -> CanonicalForm:
    """The canonical form of ``problem`` (text or SymPy) under the operation ``op``.

    ``op`` defaults by kind: ``integrate`` for an ``Integral``, ``diff``, ``limit``, ``sum``,
    ``solve`` for an equation and ``simplify`` for a plain expression. The key mixes in
    ``verifier_version``.

    Raises
    ------
    ExpressionParseError
        Text SymPy cannot parse, or an object that is not an expression.
    ExpressionTooLargeError
        Over ``limits`` (checked before any rewriting).
    """
    if isinstance(problem, str):
        expr = _evaluate(safe_parse(problem, limits=limits))
    elif isinstance(problem, sympy.Basic):
        check_size(problem, limits)
        expr = problem
    else:
        msg = f"expected text or a SymPy expression, got {type(problem).__name__}"
        raise ExpressionParseError(msg)
    try:
        return _canonicalize(expr, op, verifier_version)
    except CacheError:
        raise
    except (sympy.PolynomialError, TypeError, ValueError, AttributeError, RecursionError) as e:
        msg = f"cannot canonicalise {str(expr)[:80]!r}: {type(e).__name__}: {e}"
        raise ExpressionParseError(msg) from e


def _canonicalize(expr: sympy.Basic, op: str | None, verifier_version: str) -> CanonicalForm:
    kind, body, parts = _structure(expr, op or "")
    op = op or _DEFAULT_OP[kind]
    raw_body = _rationalize(body)
    body = normal_form(raw_body)
    parts = [_rationalize(p) if isinstance(p, sympy.Basic) else p for p in parts]
    bound: sympy.Symbol | None = None
    if kind in ("integral", "sum") and parts and isinstance(parts[0], sympy.Symbol):
        bound = parts[0]
    elif kind == "derivative" and len(parts) == 1:
        bound = parts[0][0]
    elif kind == "limit":
        bound = parts[0]
    user_bound = bound
    scale: sympy.Expr = sympy.S.One
    substitution = ""
    back_bound: sympy.Basic | None = bound
    u = sympy.Dummy("u")
    inverse: sympy.Basic | None = None  # the user's bound variable in terms of u
    if (
        kind == "sum"
        and bound is not None
        and len(parts) == 3
        and parts[1].is_finite
        and parts[1] != 0
    ):
        lo = parts[1]
        body = normal_form(body.xreplace({bound: u + lo}))
        parts = [u, sympy.Integer(0), parts[2] - lo]
        substitution = f"{bound} = {u.name} + {lo}"
        bound = u
        back_bound = user_bound - lo if user_bound is not None else None
        inverse = u + lo
    elif kind in ("integral", "derivative") and bound is not None and isinstance(body, sympy.Expr):
        # as written first, so that (2x+1)**2 is seen before expansion hides it, then the
        # normal form
        affine = _affine(raw_body, bound) if isinstance(raw_body, sympy.Expr) else None
        source = raw_body
        if affine is None:
            affine, source = _affine(body, bound), body
        if affine is not None:
            a, b = affine
            body = normal_form(source.xreplace({bound: (u - b) / a}))
            back_bound = a * bound + b
            inverse = (u - b) / a
            substitution = f"u = {a}*{bound} + {b}"
            if kind == "integral":
                scale = 1 / a
                if len(parts) == 3:
                    parts = [u, a * parts[1] + b, a * parts[2] + b]
                    back_bound = None
                else:
                    parts = [u]
            else:
                n = parts[0][1]
                scale = a**n
                parts = [(u, n)]
            bound = u
    if kind == "equation":
        num, _den = sympy.fraction(sympy.together(body))
        body = normal_form(num.as_content_primitive()[1])
    elif kind != "tuple":
        extra, body = _content_and_factor(body, bound, op)
        scale = scale * extra
    return _rename(
        kind,
        op,
        body,
        parts,
        bound,
        back_bound,
        scale,
        substitution,
        verifier_version,
        expr,
        user_bound,
        inverse if inverse is not None else u,
    )


def _rename(
    kind: str,
    op: str,
    body: sympy.Expr,
    parts: list[Any],
    bound: sympy.Symbol | None,
    back_bound: sympy.Basic | None,
    scale: sympy.Expr,
    substitution: str,
    verifier_version: str,
    original: sympy.Basic,
    user_bound: sympy.Symbol | None = None,
    inverse: sympy.Basic | None = None,
) -> CanonicalForm:
    """Rename to canonical names, try tie orders, normalise the sign, hash."""
    whole = sympy.Tuple(
        body, *[sympy.Tuple(*p) if isinstance(p, (tuple, list)) else p for p in parts]
    )
    bound_syms: list[sympy.Symbol] = []
    if bound is not None:
        bound_syms.append(bound)
    for p in parts:  # multi-variable derivatives and integrals: every variable is bound
        head = p[0] if isinstance(p, (tuple, list, sympy.Tuple)) else p
        if (
            kind in ("integral", "derivative", "sum")
            and isinstance(head, sympy.Symbol)
            and head not in bound_syms
        ):
            bound_syms.append(head)
    b_map = {s: sympy.Symbol(f"$b{i}") for i, s in enumerate(bound_syms)}
    whole_b = whole.xreplace(b_map)
    free = sorted(
        (
            s
            for s in whole_b.free_symbols
            if isinstance(s, sympy.Symbol) and not s.name.startswith("$")
        ),
        key=str,
    )
    funcs = sorted({a.func for a in whole_b.atoms(AppliedUndef)}, key=str)
    sym_groups = _ordered(free, lambda s: _symbol_signature(whole_b, s, free))
    fun_groups = _ordered(funcs, lambda f: _function_signature(whole_b, f, funcs))
    best: tuple[str, sympy.Basic, dict[Any, Any], dict[Any, Any]] | None = None
    for sym_order in _orderings(sym_groups):
        for fun_order in _orderings(fun_groups):
            s_map = {s: sympy.Symbol(f"$v{i}") for i, s in enumerate(sym_order)}
            f_map = {f: sympy.Function(f"$F{i}") for i, f in enumerate(fun_order)}
            cand = whole_b.xreplace(s_map)
            for f, g in f_map.items():
                cand = cand.replace(f, g)
            cand = sympy.Tuple(normal_form(cand.args[0]), *cand.args[1:])
            text = serialize(cand)
            if best is None or text < best[0]:
                best = (text, cand, s_map, f_map)
    assert best is not None
    text, cand, s_map, f_map = best
    sign = sympy.Integer(1)
    if (kind == "equation" or op in _LINEAR_OPS) and isinstance(cand.args[0], sympy.Expr):
        neg = sympy.Tuple(normal_form(-cand.args[0]), *cand.args[1:])
        neg_text = serialize(neg)
        if (bool(neg.args[0].could_extract_minus_sign()), neg_text) < (
            bool(cand.args[0].could_extract_minus_sign()),
            text,
        ):
            text, cand, sign = neg_text, neg, sympy.Integer(-1)
    canon_body, canon_parts = cand.args[0], list(cand.args[1:])
    back: dict[sympy.Basic, sympy.Basic] = {v: k for k, v in s_map.items()}
    forward: dict[sympy.Basic, sympy.Basic] = dict(s_map)
    if bound is not None and back_bound is not None:
        back[b_map[bound]] = back_bound
        if user_bound is not None and inverse is not None:
            u_sym = bound if inverse.has(bound) else next(iter(inverse.free_symbols), bound)
            sub = dict(s_map)
            sub[u_sym] = b_map[bound]
            forward[user_bound] = inverse.xreplace(sub)
    for s in bound_syms:
        if s is bound:
            continue
        back[b_map[s]] = s
        forward[s] = b_map[s]
    full = f"{op}|{kind}|{text}|{verifier_version}"
    key = hashlib.sha256(full.encode()).hexdigest()
    expr = _rebuild(kind, canon_body, canon_parts)
    return CanonicalForm(
        kind=kind,
        op=op,
        expr=expr,
        text=text,
        key=key,
        scale=sympy.sympify(sign * scale),
        back=back,
        forward=forward,
        functions_back={g.__name__: f for f, g in f_map.items()},
        functions_forward={f.__name__: g for f, g in f_map.items()},
        substitution=substitution,
        original=original,
    )


def _rebuild(kind: str, body: sympy.Basic, parts: list[Any]) -> sympy.Basic:
    if kind == "integral":
        if parts and all(isinstance(p, sympy.Tuple) for p in parts):
            return sympy.Integral(body, *[tuple(p.args) for p in parts])
        return sympy.Integral(body, tuple(parts))
    if kind == "derivative":
        return sympy.Derivative(body, *[tuple(p.args) for p in parts])
    if kind == "limit":
        z, z0, direction = parts
        return sympy.Limit(body, z, z0, str(direction)[len("$dir") :])
    if kind == "sum":
        return sympy.Sum(body, tuple(parts))
    if kind == "equation":
        return sympy.Eq(body, 0)
    return body
