"""Verifiers a request can name: ``rt.router.generate(..., verify=V.derivative(...))``.

A verifier is any callable that takes the validated value and returns the failures it finds,
each naming a field by JSON pointer (``"/derivative"``) with a message; ``None`` (or
``True``) means it passed, raising ``ValueError`` fails the whole value. Several compose:
pass a list. The built-ins below are exact where SymPy is (``simplify(a - b) == 0``), fall
back to numeric spot checks only when SymPy cannot decide, and say which they used
(``Failure.method`` and ``Result.verification.methods``).

Inputs of a built-in are fields of the value (a JSON pointer, or a top-level name the value
has) or literal expressions from the question, so a check needs no stored answer::

    from coreason_runtime import verifiers as V

    V.derivative(of="expression", wrt="variable", result="derivative")  # all fields
    V.derivative(of="x**3 + 2*x", result="derivative")                 # the question's own
    V.roots(of="x**2 - 5*x + 6", result="roots")
    V.units(result="energy", unit="J", equals="0.5 * 2 kg * (3 m/s)**2")
    V.invariant("total == a + b")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coreason_runtime.verify import (
    CallableCheck,
    Check,
    CheckResult,
    Failure,
    RepairRecord,
    Verdict,
    VerifyPolicy,
)
from coreason_runtime.verify._builtins import (
    Antiderivative,
    Derivative,
    Eigenvalues,
    Equivalent,
    Limit,
    Roots,
)
from coreason_runtime.verify._units import Invariant, Units

__all__ = [
    "Antiderivative",
    "CallableCheck",
    "Check",
    "CheckResult",
    "Derivative",
    "Eigenvalues",
    "Equivalent",
    "Failure",
    "Invariant",
    "Limit",
    "RepairRecord",
    "Roots",
    "Units",
    "Verdict",
    "VerifyPolicy",
    "antiderivative",
    "check",
    "derivative",
    "eigenvalues",
    "equivalent",
    "invariant",
    "limit",
    "policy",
    "roots",
    "units",
]


def derivative(of: Any, result: str, wrt: Any = "x", order: int = 1) -> Derivative:
    """``result`` is d^order/d(wrt)^order of ``of`` (SymPy differentiates and compares)."""
    return Derivative(of, result, wrt, order)


def antiderivative(of: Any, result: str, wrt: Any = "x") -> Antiderivative:
    """``result`` is an antiderivative of ``of``: differentiating it gives ``of`` back."""
    return Antiderivative(of, result, wrt)


def equivalent(result: str, to: Any) -> Equivalent:
    """``result`` equals ``to`` (a field or an expression) as expressions."""
    return Equivalent(result, to)


def roots(of: Any, result: str, wrt: Any = "x") -> Roots:
    """``result`` lists every root of ``of``: each is substituted back, none is missing."""
    return Roots(of, result, wrt)


def eigenvalues(matrix: Any, result: str) -> Eigenvalues:
    """``result`` lists the eigenvalues of ``matrix`` (roots of its characteristic polynomial)."""
    return Eigenvalues(matrix, result)


def limit(of: Any, at: Any, result: str, wrt: Any = "x", direction: str = "+-") -> Limit:
    """``result`` is the limit of ``of`` as ``wrt`` goes to ``at`` (``"oo"``: infinity)."""
    return Limit(of, at, result, wrt, direction)


def units(result: str, unit: str | None = None, equals: Any = None, rtol: float = 1e-3) -> Units:
    """``result`` is a quantity with ``unit``'s dimension (and ``equals``' magnitude), by pint."""
    return Units(result, unit, equals, rtol)


def invariant(condition: str | Callable[[Any], bool], blame: str | None = None) -> Invariant:
    """A declared invariant: ``"total == a + b"`` over top-level fields, or ``fn(value)``."""
    return Invariant(condition, blame)


def check(fn: Callable[[Any], Any], name: str | None = None) -> Check:
    """A plain callable as a named verifier (``fn(value)`` returns failures)."""
    return CallableCheck(fn, name)


def policy(verify: Any, **options: Any) -> VerifyPolicy:
    """A :class:`VerifyPolicy`: the verifiers and how failing fields are repaired
    (``candidates``, ``temperatures``, ``repair``, ``span_tiers``, ``timeout``)."""
    return VerifyPolicy.of(verify, **options)
