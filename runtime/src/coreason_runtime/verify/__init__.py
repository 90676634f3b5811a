"""Verified answers: verifiers on the request path, span repair of the fields they reject.

The public face is :mod:`coreason_runtime.verifiers`; this package holds the mechanism:
running checks (``_run``), JSON with positions (``_json``), repairing a field in a decode
session (``_span``), tool tiers that compute a field (``_tools``), and the loop that ties
them together for one answer (``_driver``).
"""

from __future__ import annotations

from coreason_runtime.verify._builtins import (
    Antiderivative,
    Derivative,
    Eigenvalues,
    Equivalent,
    Limit,
    MathCheck,
    Roots,
)
from coreason_runtime.verify._run import CallableCheck, run_checks
from coreason_runtime.verify._types import (
    Check,
    CheckResult,
    Failure,
    RepairRecord,
    Verdict,
    VerifyPolicy,
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
    "MathCheck",
    "RepairRecord",
    "Roots",
    "Units",
    "Verdict",
    "VerifyPolicy",
    "run_checks",
]
