"""What a request earned each tier it tried: success (verified where verification ran) and C."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coreason_runtime.tensor._types import Attempt, Result

__all__ = ["Outcome", "TierOutcome", "outcome", "tier_outcomes"]


@dataclass(frozen=True)
class Outcome:
    """A request's outcome: ``success`` and the C it cost (every attempt, failures included)."""

    success: bool
    cost: float


@dataclass(frozen=True)
class TierOutcome:
    """One tier's part in one request: did it answer (verified), what it cost, in tokens."""

    tier: str
    success: bool
    cost: float
    tokens_in: int
    tokens_out: int
    position: int  # 0 for the first tier tried, 1 after one escalation ...


def outcome(result: Result[Any]) -> Outcome:
    """Success and C of an answered request: the one place "success" is defined.

    With verification (issue 22's ``Result.verified``) success is ``verified is True``; a
    request without a verifier, or before verification exists, counts a validated answer
    as a success.
    """
    # Result.verified arrives with issue 22 (verified answers); until then "validated" counts.
    verified = getattr(result, "verified", None)
    success = True if verified is None else verified is True
    return Outcome(success=success, cost=result.cost)


def tier_outcomes(
    attempts: Sequence[Attempt], answer: Outcome | None, answered_by: str | None
) -> list[TierOutcome]:
    """Per tier tried, in order: the answering tier earns ``answer.success``, the others 0."""
    order: list[str] = []
    sums: dict[str, list[float]] = {}
    for a in attempts:
        if a.tier in ("cache", "human"):
            continue
        if a.tier not in sums:
            order.append(a.tier)
            sums[a.tier] = [0.0, 0.0, 0.0]
        row = sums[a.tier]
        row[0] += a.cost
        row[1] += a.tokens_in
        row[2] += a.tokens_out
    return [
        TierOutcome(
            tier=t,
            success=answer is not None and t == answered_by and answer.success,
            cost=sums[t][0],
            tokens_in=int(sums[t][1]),
            tokens_out=int(sums[t][2]),
            position=i,
        )
        for i, t in enumerate(order)
    ]
