"""Checks of cached model answers: the request-verifier type and the automatic check."""

from __future__ import annotations

import json
from collections.abc import Callable

import sympy

from coreason_runtime.cache._prompt import canonical_prompt, math_leaves
from coreason_runtime.cache._verify import numeric_equal

__all__ = ["RequestVerifier", "auto_request_verifier"]

#: ``(prompt, value_json) -> bool``: checks a cached model answer for this prompt.
RequestVerifier = Callable[[str, str], bool]


def auto_request_verifier(prompt: str, value_json: str) -> bool:
    """The default request check: JSON, and for a recognised maths question, the answer."""
    try:
        json.loads(value_json)
    except (TypeError, ValueError):
        return False
    form = canonical_prompt("", prompt)
    if not form.exprs or form.op is None:
        return True
    answers = math_leaves(value_json)
    if not answers:
        return True  # prose answer: keyed on the exact canonical question, nothing to compute
    problem, answer = form.exprs[0], answers[0]
    syms = sorted(problem.free_symbols, key=str)
    var = sympy.Symbol(form.variable) if form.variable else (syms[0] if syms else None)
    if form.op == "diff" and var is not None:
        expected = (
            problem.doit() if isinstance(problem, sympy.Derivative) else sympy.diff(problem, var)
        )
        return numeric_equal(expected, answer)
    if form.op == "integrate" and var is not None:
        if isinstance(problem, sympy.Integral):
            problem = problem.function
        return numeric_equal(sympy.diff(answer, var), problem)
    if form.op == "simplify":
        return numeric_equal(problem, answer)
    if form.op == "solve" and var is not None:
        lhs = problem.lhs - problem.rhs if isinstance(problem, sympy.Equality) else problem
        return all(numeric_equal(lhs.xreplace({var: a}), sympy.Integer(0)) for a in answers)
    return True
