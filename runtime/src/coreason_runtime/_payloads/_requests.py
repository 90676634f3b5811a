"""Payloads of the request path: requests, attempts, streamed tokens, schemas, budgets."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from coreason_runtime._payloads._base import EventPayload

__all__ = [
    "AttemptFailed",
    "AttemptFinished",
    "AttemptStarted",
    "BudgetCharged",
    "BudgetExceeded",
    "BudgetReserved",
    "BudgetReset",
    "BudgetSet",
    "Escalated",
    "HumanAnswered",
    "PrefixReused",
    "RequestFailed",
    "RequestFinished",
    "RequestStarted",
    "SchemaCompiled",
    "TokensBatch",
    "Yielded",
]


# --- requests and attempts -----------------------------------------------------------------


class RequestStarted(EventPayload):
    """``request.started``: a structured request entered the router."""

    schema_name: str
    schema_key: str
    tiers: list[str]


class RequestFinished(EventPayload):
    """``request.finished``: a validated answer came back from ``tier``."""

    tier: str
    cost: float
    attempts: int
    duration_s: float | None = None  # None: the answer came from a human, not a timed call


class RequestFailed(EventPayload):
    """``request.failed``: the request stopped without an answer."""

    tier: str
    error_type: str


class AttemptStarted(EventPayload):
    """``attempt.started``: attempt ``attempt`` (1-based within its tier) on ``tier``."""

    tier: str
    attempt: int


class AttemptFinished(EventPayload):
    """``attempt.finished``: an attempt produced a valid answer."""

    tier: str
    attempt: int
    tokens_in: int
    tokens_out: int
    cost: float
    closed: str | None = None  # the local tier closed the value early ("budget", "repetition")


class AttemptFailed(EventPayload):
    """``attempt.failed``: an attempt failed (or the tier was skipped: ``skipped``);
    ``failure`` classifies it (a :class:`~coreason_runtime.tensor.FailureKind` value)."""

    tier: str
    attempt: int
    error_type: str | None
    error: str | None
    cost: float
    retryable: bool
    skipped: bool = False  # True only when the router skipped the tier without trying it
    failure: str | None = None


class TokensBatch(EventPayload):
    """``tokens.batch``: output tokens streamed by a tier, the same fields on every tier.

    ``delta`` is the text of this batch ("" when the tier does not stream text),
    ``tokens_out`` the tokens in this batch, ``total_out`` the tokens so far in this attempt.
    """

    tier: str | None
    delta: str
    tokens_out: int
    total_out: int


class Escalated(EventPayload):
    """``request.escalated``: the cascade moved on from one tier to the next."""

    from_tier: str
    to_tier: str
    reason: str | None  # the last attempt's error type; None if it had none


class Yielded(EventPayload):
    """``request.yielded``: every tier failed; a human must answer (Oracle Circuit)."""

    cost: float
    attempts: list[dict[str, Any]]  # each an ``Attempt.model_dump()``
    schema_name: str


class HumanAnswered(EventPayload):
    """``request.human_answered``: the human's answer validated against the schema."""

    schema_name: str


class SchemaCompiled(EventPayload):
    """``schema.compiled``: a schema was compiled into the forms each tier needs."""

    key: str
    name: str
    seconds: float
    forms: list[str]
    errors: dict[str, str]
    # what the local grammar dropped or weakened from a schema the engine refused as written
    relaxed: list[str] = Field(default_factory=list)


class PrefixReused(EventPayload):
    """``cache.prefix_reused``: the local tier reused ``reused`` prompt tokens' KV cache."""

    reused: int
    prefill: int


# --- budgets -------------------------------------------------------------------------------


class BudgetSet(EventPayload):
    """``budget.set``: a workflow's ceiling Ω was set (None: no ceiling)."""

    ceiling: float | None
    spent: float


class BudgetReserved(EventPayload):
    """``budget.reserved``: C reserved for a request before dispatch."""

    tier: str
    granted: float
    wanted: float


class BudgetCharged(EventPayload):
    """``budget.charged``: a request's consumption settled; ``released`` was its grant."""

    tier: str
    tokens_in: int
    tokens_out: int
    cost: float
    spent: float
    ceiling: float | None
    released: float


class BudgetExceeded(EventPayload):
    """``budget.exceeded``: the ceiling refused a request.

    ``stage`` is ``"reserve"`` (refused before dispatch: ``requested`` is the C of the prompt
    and one output token, nothing granted or consumed) or ``"charge"`` (cut off mid-stream:
    ``requested`` is the C it would have reached).
    """

    tier: str
    stage: str
    requested: float
    granted: float
    consumed: float


class BudgetReset(EventPayload):
    """``budget.reset``: a workflow's spend was zeroed, or its ledger ``deleted``."""

    deleted: bool
