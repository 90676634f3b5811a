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

    A request that named verifiers (``verify=``: ``Result.verification`` holds their verdict)
    succeeds only when ``Result.verified``; a request without verifiers counts a validated
    answer as a success (``verified`` is False there only because nothing was asked).
    """
    success = result.verified if result.verification is not None else True
    return Outcome(success=success, cost=result.cost)


def tier_outcomes(
    attempts: Sequence[Attempt], answer: Outcome | None, answered_by: str | None
) -> list[TierOutcome]:
    """Per tier tried, in order: the answering tier earns ``answer.success``, the others 0.

    C paid beside the attempts (span repairs by other tiers, in ``answer.cost``) is the
    answering tier's: its answer needed them.
    """
    order: list[str] = []
    sums: dict[str, list[float]] = {}
    beside = 0.0 if answer is None else max(answer.cost - sum(a.cost for a in attempts), 0.0)
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
    if answered_by in sums:
        sums[answered_by][0] += beside
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
