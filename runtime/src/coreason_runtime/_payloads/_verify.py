"""Payloads of verified answers: a verdict on an attempt's answer, and each field repaired."""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = ["FieldRepaired", "RequestVerified"]


class RequestVerified(EventPayload):
    """``request.verified``: the verifiers judged attempt ``attempt`` on ``tier`` (after any
    repairs); ``failures`` describes what they still reject, ``methods`` how each decided
    (``sympy`` exact, ``numeric`` spot checks, ``pint``, ``callable``)."""

    tier: str
    attempt: int
    verified: bool
    failures: list[str]
    methods: dict[str, str]
    repairs: int


class FieldRepaired(EventPayload):
    """``request.field_repaired``: field ``field`` (a JSON pointer) was repaired by ``tier``
    (``local``: re-decoded in its session; ``cas``: a tool; a remote tier's name), or not
    (``accepted`` false), at this cost."""

    field: str
    tier: str
    accepted: bool
    tokens_in: int
    tokens_out: int
    cost: float
    candidates: int
    old: str
    new: str
    reason: str
