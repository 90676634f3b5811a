"""Verified answers: verifiers on the request path, span repair of the fields they reject.

The public face is :mod:`coreason_runtime.verifiers` (the built-ins, ``_builtins`` and
``_units``, which import SymPy and pint); this package holds the mechanism and stays light
to import: running checks (``_run``), JSON with positions (``_json``), repairing a field in a
decode session (``_span``), tool tiers that compute a field (``_tools``), lazy fields
(``_lazy``), and the loop that ties them together for one answer (``_driver``).
"""

from __future__ import annotations

from coreason_runtime.verify._run import CallableCheck, run_checks
from coreason_runtime.verify._types import (
    Check,
    CheckResult,
    Failure,
    RepairRecord,
    Verdict,
    VerifyPolicy,
)

__all__ = [
    "CallableCheck",
    "Check",
    "CheckResult",
    "Failure",
    "RepairRecord",
    "Verdict",
    "VerifyPolicy",
    "run_checks",
]
