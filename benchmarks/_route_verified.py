"""The verified-answers task set (``benchmarks/verified_tasks.py``) as routing requests.

Each of its 100 problems keeps its own schema (one answer field), its prompt and its real
verifier (``coreason_runtime.verifiers``: SymPy or pint, built from the problem alone), passed
to the router as ``verify=`` with span repair off, so a rejected answer is fed back, retried,
then escalated like the scripted families' validator failures. The right answer is what the
verifier itself computes (``Check.produce``); the wrong one is a plausible slip (a constant
added, a factor of 2, a root shifted, a limit off by one). The problems carry no difficulty:
the workload assigns one by a rule (size of the expression, of the matrix, of the formula,
plus a per-problem jitter from a hash), since the scripted model tiers need one.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

import sympy as sp
from coreason_runtime import verifiers as V

from benchmarks.verified_tasks import TASKS
from benchmarks.verified_tasks import Task as Problem

#: the verified set's kinds as profile families (physics is its own family: forces, power,
#: charge as well as kinetic energy)
FAMILY = {
    "derivative": "derivative",
    "antiderivative": "antiderivative",
    "roots": "roots",
    "eigenvalues": "eigen",
    "limit": "limit",
    "physics": "physics",
}


def _jitter(prompt: str) -> float:
    h = hashlib.blake2b(prompt.encode(), digest_size=4).digest()
    return 0.25 * int.from_bytes(h, "big") / 2**32


def difficulty(p: Problem) -> float:
    """The latent difficulty the scripted tiers see: a rule on the problem's size."""
    args = p.verifier[1]
    if p.kind == "eigenvalues":
        base = 0.2 + 0.25 * (len(args["matrix"]) - 2)
    elif p.kind == "physics":
        base = 0.1 + 0.05 * sum(args["equals"].count(c) for c in "*/")
    else:
        base = 0.06 * float(sp.count_ops(sp.sympify(args["of"])))
    return min(0.95, base + _jitter(p.prompt))


def _slip(kind: str, right: Any) -> Any:
    """A plausible wrong answer of the same shape."""
    if kind in ("roots", "eigenvalues"):
        return [str(sp.sympify(right[0]) + 1), *right[1:]]
    if kind == "limit":
        return "0" if right in ("oo", "-oo") else str(sp.sympify(right) + 1)
    if kind == "antiderivative":
        return str(2 * sp.sympify(right))
    if kind == "physics":
        number, unit = right.split(" ", 1)
        return f"{2 * float(number):g} {unit}"
    return f"{right} + 1"


def _right(p: Problem) -> Any:
    field = p.verifier[1]["result"]
    got = p.check().produce({}, f"/{field}")
    if got is None:
        msg = f"the verifier computes no answer to {p.prompt!r}"
        raise RuntimeError(msg)
    if p.kind in ("roots", "eigenvalues"):
        return [str(v) for v in got]
    if p.kind == "physics":
        q = got.quantity if hasattr(got, "quantity") else got
        return f"{float(q.magnitude):g} {p.verifier[1]['unit']}"
    return str(got)


@cache
def answers(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(right, wrong) answers to problem ``index``, each checked by the problem's verifier
    (the right one must pass and the wrong one fail, or the workload is broken)."""
    p = TASKS[index]
    field = p.verifier[1]["result"]
    right = {field: _right(p)}
    wrong = {field: _slip(p.kind, right[field])}
    for value, ok in ((right, True), (wrong, False)):
        model = p.schema.model_validate(value)
        if (not p.check()(model.model_dump())) != ok:
            msg = f"{p.prompt!r}: the verifier {'rejects' if ok else 'accepts'} {value}"
            raise RuntimeError(msg)
    return right, wrong


def policy(p: Problem) -> Any:
    """The request's ``verify=``: the problem's verifier, no span repair (a rejected answer is
    retried whole, then escalated)."""
    return V.policy(p.check(), repair=False, span_tiers=())
