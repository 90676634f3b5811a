"""Verify-on-hit: numerical checks that a cached result answers the user's own problem."""

from __future__ import annotations

import hashlib
import inspect
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import mpmath
import sympy
from sympy.core.function import AppliedUndef

from coreason_runtime.cache._canonical import CanonicalForm

__all__ = ["EQUALITY_OPS", "SympyVerifier", "Verifier", "numeric_equal", "verifier_hash"]

#: Operations whose result must equal their input; the only expression ops verified on a hit.
EQUALITY_OPS = frozenset(
    {
        "simplify",
        "factor",
        "expand",
        "cancel",
        "together",
        "evaluate",
        "trigsimp",
        "radsimp",
        "apart",
        "collect",
        "nsimplify",
        "rewrite",
    }
)

# Concrete stand-ins for undefined functions f, g, …: smooth, distinct, defined on the reals.
_STAND_INS = [
    lambda t: sympy.exp(t / 3) * sympy.cos(t) + t**2 / 5,
    lambda t: sympy.sin(2 * t) + sympy.exp(-t / 2) + t / 7,
    lambda t: sympy.atan(t) + t**3 / 11 + 1,
    lambda t: sympy.cosh(t / 4) * sympy.sin(t + 1),
]


def verifier_hash(obj: Any) -> str:
    """A short hash of a verifier's source (its behaviour), for keys and provenance."""
    try:
        src = inspect.getsource(
            obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
        )
    except (OSError, TypeError):
        src = repr(obj)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


@runtime_checkable
class Verifier(Protocol):
    """Checks a result against the user's problem before a cache hit is used."""

    name: str
    version: str

    def check(self, form: CanonicalForm, result: sympy.Basic) -> bool:
        """True when ``result`` (in the user's names) answers ``form.original``."""
        ...


def _concretize(expr: sympy.Basic) -> sympy.Basic:
    """Replace undefined functions by fixed smooth stand-ins and evaluate their derivatives."""
    funcs = sorted({a.func for a in expr.atoms(AppliedUndef)}, key=str)
    if not funcs:
        return expr
    t = sympy.Dummy("t")
    out = expr
    for i, f in enumerate(funcs):
        out = out.replace(f, sympy.Lambda(t, _STAND_INS[i % len(_STAND_INS)](t)))
    return out.doit()


def _value(expr: sympy.Basic, point: dict[sympy.Symbol, Any], dps: int = 30) -> complex | None:
    try:
        val = complex(sympy.N(expr.xreplace(point), dps))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return None
    if not (math.isfinite(val.real) and math.isfinite(val.imag)):
        return None
    return val


def _close(a: complex, b: complex, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b))


def numeric_equal(
    a: sympy.Basic,
    b: sympy.Basic,
    *,
    points: int = 5,
    rtol: float = 1e-8,
    seed: int = 0,
    symbols: Iterable[sympy.Symbol] | None = None,
) -> bool:
    """True when ``a`` and ``b`` agree at ``points`` random points (reals in [0.3, 2.1]).

    Points where either side is undefined are redrawn (up to 8× as many draws); if fewer than
    ``points`` usable points are found the answer is ``False`` — an unverifiable result is
    never accepted.
    """
    a, b = _concretize(sympy.sympify(a)), _concretize(sympy.sympify(b))
    syms = sorted(
        set(symbols) if symbols is not None else (a.free_symbols | b.free_symbols), key=str
    )
    rng = random.Random(seed)
    good = 0
    for _ in range(points * 8):
        point = {s: sympy.Rational(rng.randint(300, 2100), 1000) for s in syms}
        va, vb = _value(a, point), _value(b, point)
        if va is None or vb is None:
            continue
        if not _close(va, vb, rtol):
            return False
        good += 1
        if good >= points or not syms:
            return True
    return False


def _central_difference(
    f: sympy.Basic, z: sympy.Symbol, z0: sympy.Rational, order: int
) -> complex | None:
    """The ``order``-th derivative of ``f`` at ``z0`` by a central difference (h = 1e-8, values
    at 60 digits, so the O(h²) error and the round-off both stay below 1e-12)."""
    h = sympy.Rational(1, 10**8)
    total = sympy.Integer(0)
    for k in range(order + 1):
        at = sympy.Float(z0 + (sympy.Rational(order, 2) - k) * h, 60)
        try:
            val = sympy.N(f.xreplace({z: at}), 60)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        total += (-1) ** k * math.comb(order, k) * val
    out = _value(total / h**order, {}, dps=30)
    return out


class SympyVerifier:
    """The built-in verifier for SymPy subgoals, by kind of problem.

    * integral: ``d/dx result == integrand`` at random points, the derivative of the
      candidate taken by a 60-digit central difference (indefinite), or ``result`` against
      numerical quadrature (definite);
    * derivative: ``result`` against a central difference of the original body at random
      points (no symbolic work is redone);
    * limit: ``result`` against the function evaluated (30 digits) ever closer to the point;
    * sum: against ``mpmath.nsum`` (infinite) or direct summation for small upper bounds;
    * equation: every solution substituted back gives 0;
    * expression ops (simplify, factor, …): ``result == original`` numerically.
    """

    name = "sympy-numeric"

    def __init__(self, points: int = 5, rtol: float = 1e-8, seed: int = 1234) -> None:
        self.points = points
        self.rtol = rtol
        self.seed = seed
        self.version = f"{self.name}-{verifier_hash(SympyVerifier)}-sympy{sympy.__version__}"
        self._checks: dict[str, Callable[[sympy.Basic, sympy.Basic], bool]] = {
            "integral": self._integral,
            "derivative": self._derivative,
            "limit": self._limit,
            "sum": self._sum,
            "equation": self._equation,
            "expr": self._expr,
        }

    def check(self, form: CanonicalForm, result: sympy.Basic) -> bool:
        original = form.original
        if original is None:
            return False
        check = self._checks.get(form.kind)
        if check is None or (
            form.kind == "expr" and form.op not in EQUALITY_OPS and not form.op.startswith("step:")
        ):
            return False
        try:
            return bool(check(original, result))
        except (
            TypeError,
            ValueError,
            ZeroDivisionError,
            AttributeError,
            NotImplementedError,
            sympy.PolynomialError,
            RecursionError,
        ):
            return False

    def _eq(self, a: sympy.Basic, b: sympy.Basic) -> bool:
        return numeric_equal(a, b, points=self.points, rtol=self.rtol, seed=self.seed)

    def _integral(self, original: sympy.Basic, result: sympy.Basic) -> bool:
        assert isinstance(original, sympy.Integral)
        if result.has(sympy.Integral):
            return False
        if len(original.limits) == 1 and len(original.limits[0]) == 1:
            return self._antiderivative(original, result)
        if all(len(lim) == 1 for lim in original.limits):
            deriv = result
            for lim in reversed(original.limits):
                deriv = sympy.diff(deriv, lim[0])
            return self._eq(deriv, original.function)
        free = sorted(original.free_symbols, key=str)
        rng = random.Random(self.seed)
        for _ in range(2):
            point = {s: sympy.Rational(rng.randint(300, 2100), 1000) for s in free}
            quad = _value(_concretize(original.xreplace(point)), {}, dps=15)
            got = _value(_concretize(result.xreplace(point)), {}, dps=15)
            if quad is None or got is None or not _close(quad, got, 1e-6):
                return False
        return True

    def _antiderivative(self, original: sympy.Integral, result: sympy.Basic) -> bool:
        """d/dx result == integrand at random points, the derivative taken numerically."""
        (z,) = original.limits[0]
        others = sorted(original.free_symbols - {z}, key=str)
        rng = random.Random(self.seed)
        integrand, candidate = _concretize(original.function), _concretize(result)
        good = 0
        for _ in range(self.points * 4):
            point = {s: sympy.Rational(rng.randint(300, 2100), 1000) for s in others}
            z0 = sympy.Rational(rng.randint(300, 2100), 1000)
            want = _value(integrand.xreplace(point), {z: z0})
            got = _central_difference(candidate.xreplace(point), z, z0, 1)
            if want is None or got is None:
                continue
            if not _close(got, want, 1e-6):
                return False
            good += 1
            if good >= 3:
                return True
        return False

    def _derivative(self, original: sympy.Basic, result: sympy.Basic) -> bool:
        assert isinstance(original, sympy.Derivative)
        if len(original.variable_count) != 1:
            return self._eq(original.doit(), result)
        # numerically, without redoing the symbolic work: mpmath differentiates the body
        ((z, order),) = original.variable_count
        others = sorted(original.free_symbols - {z}, key=str)
        rng = random.Random(self.seed)
        body = _concretize(original.expr)
        good = 0
        for _ in range(self.points * 4):
            point = {s: sympy.Rational(rng.randint(300, 2100), 1000) for s in others}
            z0 = sympy.Rational(rng.randint(300, 2100), 1000)
            f = body.xreplace(point)
            want = _value(_concretize(result).xreplace(point), {z: z0})
            if want is None:
                continue

            got = _central_difference(f, z, z0, int(order))
            if got is None:
                continue
            if not _close(got, want, 1e-6):
                return False
            good += 1
            if good >= 3:
                return True
        return False

    def _limit(self, original: sympy.Basic, result: sympy.Basic) -> bool:
        body, z, z0, direction = original.args
        free = sorted(original.free_symbols, key=str)
        rng = random.Random(self.seed)
        point = {s: sympy.Rational(rng.randint(300, 2100), 1000) for s in free}
        body, z0 = _concretize(body.xreplace(point)), z0.xreplace(point)
        target = result.xreplace(point)
        sign = -1 if str(direction) == "-" else 1
        with mpmath.workdps(60):
            # Floats, not Rationals: (1 + 2/10**16)**(10**16) must not be computed exactly
            if z0 in (sympy.oo, -sympy.oo):
                probes = [sympy.Float(10**k * (1 if z0 == sympy.oo else -1), 60) for k in (12, 16)]
            else:
                probes = [sympy.Float(z0 + sign * sympy.Rational(1, 10**k), 60) for k in (12, 16)]
            values = [_value(body, {z: p}, dps=60) for p in probes]
        if target in (sympy.oo, -sympy.oo):
            want = 1 if target == sympy.oo else -1
            return all(v is not None and v.real * want > 1e5 and abs(v.imag) < 1e-6 for v in values)
        tv = _value(target, {})
        return tv is not None and all(v is not None and _close(v, tv, 1e-5) for v in values)

    def _sum(self, original: sympy.Basic, result: sympy.Basic) -> bool:
        assert isinstance(original, sympy.Sum)
        k, lo, hi = original.limits[0]
        if hi == sympy.oo:
            others = sorted(original.free_symbols, key=str)
            point = {s: sympy.Rational(7, 10) for s in others}
            body = sympy.lambdify(k, _concretize(original.function.xreplace(point)), "mpmath")
            with mpmath.workdps(30):
                want = complex(mpmath.nsum(body, [int(lo), mpmath.inf]))
            got = _value(result.xreplace(point), {})
            return got is not None and _close(want, got, 1e-8)
        n_syms = sorted(hi.free_symbols, key=str)
        if not n_syms:
            return self._eq(original.doit(), result)
        n = n_syms[0]
        for m in range(0, 5):
            finite = sympy.Sum(original.function, (k, lo, hi.xreplace({n: n + 0}))).xreplace(
                {n: sympy.Integer(m) + (lo if lo.is_number else 0)}
            )
            if not self._eq(
                finite.doit(), result.xreplace({n: sympy.Integer(m) + (lo if lo.is_number else 0)})
            ):
                return False
        return True

    def _equation(self, original: sympy.Basic, result: sympy.Basic) -> bool:
        lhs = original.lhs - original.rhs if isinstance(original, sympy.Equality) else original
        sols: Sequence[Any] = (
            list(result) if isinstance(result, (list, tuple, sympy.Tuple)) else [result]
        )
        syms = sorted(lhs.free_symbols, key=str)
        for sol in sols:
            if isinstance(sol, dict):
                sub = dict(sol)
            elif isinstance(sol, sympy.Dict):
                sub = dict(sol.items())
            elif len(syms) == 1:
                sub = {syms[0]: sol}
            else:
                return False
            if not self._eq(lhs.xreplace(sub), sympy.Integer(0)):
                return False
        return True

    def _expr(self, original: sympy.Basic, result: sympy.Basic) -> bool:
        return self._eq(original, result)
