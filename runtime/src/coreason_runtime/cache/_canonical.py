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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy

from coreason_runtime._exceptions import CacheError, ExpressionParseError
from coreason_runtime.cache._names import Naming, name_canonically
from coreason_runtime.cache._normal import evaluated, normal_form, rationalize
from coreason_runtime.cache._parse import DEFAULT_LIMITS, Limits, check_size, safe_parse

__all__ = ["CanonicalForm", "canonicalize"]

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
        expr = evaluated(safe_parse(problem, limits=limits))
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


@dataclass
class _Problem:
    """A subgoal on its way to canonical form: body and parts, and what was done to them.

    ``bound`` is the bound variable (``u`` after a substitution), ``user_bound`` the user's;
    ``back_bound`` is the user's expression for the canonical bound variable and ``inverse``
    the user's bound variable in terms of ``u``.
    """

    kind: str
    op: str
    body: sympy.Basic
    parts: list[Any]
    bound: sympy.Symbol | None
    user_bound: sympy.Symbol | None
    back_bound: sympy.Basic | None
    inverse: sympy.Basic
    scale: sympy.Expr = sympy.S.One
    substitution: str = ""


def _canonicalize(expr: sympy.Basic, op: str | None, verifier_version: str) -> CanonicalForm:
    kind, body, parts = _structure(expr, op or "")
    op = op or _DEFAULT_OP[kind]
    raw_body = rationalize(body)
    parts = [rationalize(p) if isinstance(p, sympy.Basic) else p for p in parts]
    bound = _bound_variable(kind, parts)
    u = sympy.Dummy("u")
    p = _Problem(kind, op, normal_form(raw_body), parts, bound, bound, bound, u)
    if (
        kind == "sum"
        and bound is not None
        and len(parts) == 3
        and parts[1].is_finite
        and parts[1] != 0
    ):
        _shift_sum(p, u)
    elif (
        kind in ("integral", "derivative") and bound is not None and isinstance(p.body, sympy.Expr)
    ):
        _substitute_affine(p, raw_body, u)
    if kind == "equation":
        num, _den = sympy.fraction(sympy.together(p.body))
        p.body = normal_form(num.as_content_primitive()[1])
    elif kind != "tuple":
        extra, p.body = _content_and_factor(p.body, p.bound, op)
        p.scale = p.scale * extra
    naming = name_canonically(
        kind, p.body, p.parts, p.bound, signed=kind == "equation" or op in _LINEAR_OPS
    )
    back, forward = _maps(p, naming)
    full = f"{op}|{kind}|{naming.text}|{verifier_version}"
    return CanonicalForm(
        kind=kind,
        op=op,
        expr=_rebuild(kind, naming.body, naming.parts),
        text=naming.text,
        key=hashlib.sha256(full.encode()).hexdigest(),
        scale=sympy.sympify(naming.sign * p.scale),
        back=back,
        forward=forward,
        functions_back={g.__name__: f for f, g in naming.functions.items()},
        functions_forward={f.__name__: g for f, g in naming.functions.items()},
        substitution=p.substitution,
        original=expr,
    )


def _bound_variable(kind: str, parts: list[Any]) -> sympy.Symbol | None:
    """The variable an integral, sum, single derivative or limit binds."""
    if kind in ("integral", "sum") and parts and isinstance(parts[0], sympy.Symbol):
        return parts[0]
    if kind == "derivative" and len(parts) == 1:
        return parts[0][0]  # type: ignore[no-any-return]
    if kind == "limit":
        return parts[0]  # type: ignore[no-any-return]
    return None


def _shift_sum(p: _Problem, u: sympy.Dummy) -> None:
    """Shift a sum's index so that it starts at 0."""
    assert p.bound is not None
    lo = p.parts[1]
    p.body = normal_form(p.body.xreplace({p.bound: u + lo}))
    p.parts = [u, sympy.Integer(0), p.parts[2] - lo]
    p.substitution = f"{p.bound} = {u.name} + {lo}"
    p.bound = u
    p.back_bound = p.user_bound - lo if p.user_bound is not None else None
    p.inverse = u + lo


def _substitute_affine(p: _Problem, raw_body: sympy.Basic, u: sympy.Dummy) -> None:
    """``∫ f(a·x+b) dx`` → ``(1/a)·∫ f(u) du``; ``dⁿ/dxⁿ f(a·x+b)`` → ``aⁿ·f⁽ⁿ⁾(u)``."""
    bound = p.bound
    assert bound is not None
    # as written first, so that (2x+1)**2 is seen before expansion hides it, then the
    # normal form
    affine = _affine(raw_body, bound) if isinstance(raw_body, sympy.Expr) else None
    source = raw_body
    if affine is None:
        affine, source = _affine(p.body, bound), p.body
    if affine is None:
        return
    a, b = affine
    p.body = normal_form(source.xreplace({bound: (u - b) / a}))
    p.back_bound = a * bound + b
    p.inverse = (u - b) / a
    p.substitution = f"u = {a}*{bound} + {b}"
    if p.kind == "integral":
        p.scale = 1 / a
        if len(p.parts) == 3:
            p.parts = [u, a * p.parts[1] + b, a * p.parts[2] + b]
            p.back_bound = None
        else:
            p.parts = [u]
    else:
        n = p.parts[0][1]
        p.scale = a**n
        p.parts = [(u, n)]
    p.bound = u


def _maps(
    p: _Problem, naming: Naming
) -> tuple[dict[sympy.Basic, sympy.Basic], dict[sympy.Basic, sympy.Basic]]:
    """``back`` (canonical → user's) and ``forward`` (user's → canonical) symbol maps."""
    back: dict[sympy.Basic, sympy.Basic] = {v: k for k, v in naming.symbols.items()}
    forward: dict[sympy.Basic, sympy.Basic] = dict(naming.symbols)
    if p.bound is not None and p.back_bound is not None:
        back[naming.bound[p.bound]] = p.back_bound
        if p.user_bound is not None:
            inverse = p.inverse
            u_sym = p.bound if inverse.has(p.bound) else next(iter(inverse.free_symbols), p.bound)
            sub = dict(naming.symbols)
            sub[u_sym] = naming.bound[p.bound]
            forward[p.user_bound] = inverse.xreplace(sub)
    for s, b in naming.bound.items():
        if s is p.bound:
            continue
        back[b] = s
        forward[s] = b
    return back, forward


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
