"""Built-in verifiers for calculus and linear algebra answers, checked with SymPy.

Every argument naming an input is either a field of the value (a JSON pointer ``"/a/b"``,
or a bare name the value has at its top level) or a literal expression from the question
(``of="x**3 + 2*x"``): the verifier then needs no stored answer. ``result`` is always a
field: the one judged, repaired, and computed by the CAS tier (:meth:`Check.produce`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import sympy

from coreason_runtime._exceptions import RequestError
from coreason_runtime.verify._json import get_pointer
from coreason_runtime.verify._math import EXACT, read_expr, read_list, same, show
from coreason_runtime.verify._types import Check, CheckResult, Failure, as_value, normalise_pointer

__all__ = [
    "Antiderivative",
    "Arg",
    "Derivative",
    "Eigenvalues",
    "Equivalent",
    "Limit",
    "MathCheck",
    "Roots",
    "Unreadable",
]


class Unreadable(Exception):
    """An input field that does not hold what the check needs (blamed on that field)."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message


class Arg:
    """One input of a check: a field of the value, or a literal from the question."""

    def __init__(self, spec: Any, role: str) -> None:
        self.spec = spec
        self.role = role
        text = spec if isinstance(spec, str) else None
        self.pointer: str | None = text if text is not None and text.startswith("/") else None
        self.name: str | None = text if text is not None and text.isidentifier() else None

    @property
    def may_be_field(self) -> bool:
        return self.pointer is not None or self.name is not None

    def field_of(self, value: Any) -> str | None:
        """The pointer this argument names in ``value``, or None for a literal."""
        if self.pointer is not None:
            return self.pointer
        if self.name is not None and isinstance(value, dict) and self.name in value:
            return normalise_pointer(self.name)
        return None

    def raw(self, value: Any) -> tuple[Any, str | None]:
        """The input's raw value and the field it came from (None: a literal)."""
        pointer = self.field_of(value)
        if pointer is None:
            return self.spec, None
        try:
            return get_pointer(value, pointer), pointer
        except LookupError:
            raise Unreadable(pointer, f"the {self.role} field {pointer!r} is missing") from None

    def expr(self, value: Any) -> Any:
        raw, pointer = self.raw(value)
        try:
            return read_expr(raw)
        except ValueError as e:
            if pointer is None:
                raise
            raise Unreadable(pointer, f"cannot read the {self.role} {raw!r}: {e}") from e

    def symbol(self, value: Any) -> sympy.Symbol:
        raw, pointer = self.raw(value)
        if not isinstance(raw, str) or not raw.strip().isidentifier():
            where = pointer or "the verifier's arguments"
            raise Unreadable(pointer or "", f"{raw!r} ({where}) is not a variable name")
        return sympy.Symbol(raw.strip())

    def check_literal(self) -> None:
        """Fail early on a literal that cannot be read (a typo in the caller's code)."""
        if self.may_be_field:
            return
        try:
            read_expr(self.spec)
        except ValueError as e:
            msg = f"the {self.role} {self.spec!r} is neither a field name nor an expression: {e}"
            raise RequestError(msg) from e


class MathCheck(Check):
    """A check that reads its inputs, computes the right answer, and judges ``result``."""

    kind = "math"

    def __init__(self, result: str, **inputs: Any) -> None:
        if not isinstance(result, str) or not result:
            msg = f"{self.kind}: result must name the field to judge, got {result!r}"
            raise RequestError(msg)
        self.result = normalise_pointer(result)
        self.args = {k: Arg(v, k) for k, v in inputs.items() if v is not None}
        for arg in self.args.values():
            arg.check_literal()
        self.name = f"{self.kind}({self.result})"

    @property
    def reads(self) -> frozenset[str]:
        names = {a.pointer or normalise_pointer(a.name or "") for a in self.args.values()}
        return frozenset({self.result} | {p for p in names if p})

    @property
    def expression_fields(self) -> frozenset[str]:
        return frozenset({self.result})

    def arg(self, key: str, value: Any) -> Any:
        return self.args[key].expr(value)

    def var(self, value: Any) -> sympy.Symbol:
        return self.args["wrt"].symbol(value) if "wrt" in self.args else sympy.Symbol("x")

    @abstractmethod
    def expected(self, value: Any) -> Any:
        """The right answer from the inputs (raises :class:`Unreadable` on a bad input)."""

    def judge(self, value: Any, got: Any, expected: Any) -> tuple[bool, str]:
        """Whether ``got`` is right, and how that was decided (default: equal to expected)."""
        return same(got, expected)

    def read_result(self, raw: Any) -> Any:
        return read_expr(raw)

    def check(self, value: Any) -> CheckResult:
        v = as_value(value)
        try:
            expected = self.expected(v)
            raw = get_pointer(v, self.result)
        except Unreadable as u:
            return CheckResult((Failure(u.pointer, u.message, self.name, method=EXACT),), EXACT)
        except LookupError:
            missing = f"the result field {self.result!r} is missing"
            return CheckResult((Failure(self.result, missing, self.name, method=EXACT),), EXACT)
        try:
            got = self.read_result(raw)
        except ValueError as e:
            message = f"cannot read {raw!r}: {e}"
            fail = Failure(self.result, message, self.name, show(expected), EXACT)
            return CheckResult((fail,), EXACT)
        ok, method = self.judge(v, got, expected)
        if ok:
            return CheckResult((), method)
        message = f"expected {show(expected)}, got {show(got)}"
        return CheckResult(
            (Failure(self.result, message, self.name, show(expected), method),), method
        )

    def produce(self, value: Any, pointer: str) -> Any:
        if normalise_pointer(pointer) != self.result:
            return None
        try:
            return self.expected(as_value(value))
        except (Unreadable, ValueError, NotImplementedError):
            return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={a.spec!r}" for k, a in self.args.items())
        return f"{self.kind}({args}, result={self.result!r})"


class Derivative(MathCheck):
    """``result`` is the ``order``-th derivative of ``of`` with respect to ``wrt``."""

    kind = "derivative"

    def __init__(self, of: Any, result: str, wrt: Any = "x", order: int = 1) -> None:
        super().__init__(result, of=of, wrt=wrt)
        self.order = order

    def expected(self, value: Any) -> Any:
        return sympy.diff(self.arg("of", value), self.var(value), self.order)


class Antiderivative(MathCheck):
    """``result`` differentiates back to ``of`` (any constant of integration)."""

    kind = "antiderivative"

    def __init__(self, of: Any, result: str, wrt: Any = "x") -> None:
        super().__init__(result, of=of, wrt=wrt)

    def expected(self, value: Any) -> Any:
        integral = sympy.integrate(self.arg("of", value), self.var(value))
        if integral.has(sympy.Integral):
            msg = "SymPy finds no closed form"
            raise NotImplementedError(msg)
        return integral

    def judge(self, value: Any, got: Any, expected: Any) -> tuple[bool, str]:
        return same(sympy.diff(got, self.var(value)), self.arg("of", value))


class Equivalent(MathCheck):
    """``result`` equals ``to`` as expressions (``simplify(a - b) == 0``)."""

    kind = "equivalent"

    def __init__(self, result: str, to: Any) -> None:
        super().__init__(result, to=to)

    def expected(self, value: Any) -> Any:
        return self.arg("to", value)


class Limit(MathCheck):
    """``result`` is the limit of ``of`` as ``wrt`` goes to ``at`` (``"oo"`` for infinity)."""

    kind = "limit"

    def __init__(
        self, of: Any, at: Any, result: str, wrt: Any = "x", direction: str = "+-"
    ) -> None:
        super().__init__(result, of=of, at=at, wrt=wrt)
        self.direction = direction

    def expected(self, value: Any) -> Any:
        f, var, at = self.arg("of", value), self.var(value), self.arg("at", value)
        if self.direction == "+-" and not at.is_infinite:
            left, right = sympy.limit(f, var, at, "-"), sympy.limit(f, var, at, "+")
            if left != right:
                msg = f"the one-sided limits differ ({left}, {right})"
                raise NotImplementedError(msg)
            return right
        return sympy.limit(f, var, at, "+" if self.direction == "+-" else self.direction)


def _same_sets(got: list[Any], want: list[Any]) -> tuple[bool, str]:
    """Every claimed value is one of ``want`` and every one of ``want`` is claimed."""
    methods = set()
    matched: set[int] = set()
    for g in got:
        hit = None
        for i, w in enumerate(want):
            ok, method = same(g, w)
            methods.add(method)
            if ok:
                hit = i
                break
        if hit is None:
            return False, "numeric" if "numeric" in methods else EXACT
        matched.add(hit)
    return len(matched) == len(want), "numeric" if "numeric" in methods else EXACT


class Roots(MathCheck):
    """``result`` lists the roots of ``of`` in ``wrt``: each is substituted back (it must give
    0), and none is missing."""

    kind = "roots"

    def __init__(self, of: Any, result: str, wrt: Any = "x") -> None:
        super().__init__(result, of=of, wrt=wrt)

    def read_result(self, raw: Any) -> Any:
        return read_list(raw)

    def expected(self, value: Any) -> Any:
        roots = sympy.solve(self.arg("of", value), self.var(value))
        return sorted(set(roots), key=sympy.default_sort_key)

    def judge(self, value: Any, got: Any, expected: Any) -> tuple[bool, str]:
        f, var = self.arg("of", value), self.var(value)
        for r in got:  # substitute: a claimed root must make the expression vanish
            ok, method = same(f.subs(var, r), 0)
            if not ok:
                return False, method
        return _same_sets(list(dict.fromkeys(got)), list(expected))


class Eigenvalues(MathCheck):
    """``result`` lists the eigenvalues of ``matrix`` (a field or a literal list of rows):
    each must be a root of the characteristic polynomial, and none may be missing."""

    kind = "eigenvalues"

    def __init__(self, matrix: Any, result: str) -> None:
        super().__init__(result)
        self.matrix = Arg(matrix, "matrix")
        if not self.matrix.may_be_field:
            self._rows(matrix, None)  # a bad literal fails here, not at the first answer

    @property
    def reads(self) -> frozenset[str]:
        extra = self.matrix.pointer or (normalise_pointer(self.matrix.name or "") or None)
        return frozenset({self.result, *([extra] if extra else [])})

    def _rows(self, raw: Any, pointer: str | None) -> sympy.Matrix:
        try:
            if isinstance(raw, str):
                import json

                raw = json.loads(raw)
            if not isinstance(raw, list) or not raw or not all(isinstance(r, list) for r in raw):
                msg = "a matrix is a non-empty list of rows"
                raise ValueError(msg)
            m = sympy.Matrix([[read_expr(x) for x in row] for row in raw])
            if not m.is_square:
                msg = f"the matrix is {m.rows}x{m.cols}, not square"
                raise ValueError(msg)
        except ValueError as e:
            if pointer is None:
                msg = f"eigenvalues: matrix {raw!r} cannot be read: {e}"
                raise RequestError(msg) from e
            raise Unreadable(pointer, f"cannot read the matrix {raw!r}: {e}") from e
        return m

    def expected(self, value: Any) -> Any:
        raw, pointer = self.matrix.raw(value)
        eig = self._rows(raw, pointer).eigenvals()
        return sorted(eig, key=sympy.default_sort_key)

    def read_result(self, raw: Any) -> Any:
        return read_list(raw)

    def judge(self, value: Any, got: Any, expected: Any) -> tuple[bool, str]:
        raw, pointer = self.matrix.raw(value)
        m = self._rows(raw, pointer)
        lam = sympy.Symbol("lambda_")
        poly = m.charpoly(lam).as_expr()
        for g in got:  # the characteristic polynomial vanishes at every eigenvalue
            ok, method = same(poly.subs(lam, g), 0)
            if not ok:
                return False, method
        return _same_sets(list(dict.fromkeys(got)), list(expected))

    def __repr__(self) -> str:
        return f"eigenvalues(matrix={self.matrix.spec!r}, result={self.result!r})"
