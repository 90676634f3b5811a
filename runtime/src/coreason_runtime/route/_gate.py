"""The what-if gate on escalation (of a request, or of one field), and on a tool call's commit.

Both ask the same :class:`~coreason_runtime.sim.WhatIfGate` (its thresholds, its events): a
prediction of what the expensive step returns (``gain``: the chance it yields a verified
answer, worth 1) against what it costs (``cost``: λ·C), allowed when the gain per cost is at
least ``min_ratio`` (1: the predicted reward ``p − λC`` is not negative). A refusal is
published as ``whatif.refused`` with its reason; a refused escalation goes to the human.
A field a verifier rejected and the request's own decoder could not fix is asked of span tiers
(a CAS, a remote tier asked for that field only): each such span escalation is judged the same
way, on how often that tier's field answers were accepted in the task family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import TransactionAbortedError
from coreason_runtime.sim._whatif import Decision, Prediction, WhatIfGate

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus
    from coreason_runtime.route._policy import TierEstimate
    from coreason_runtime.txn import Transaction

__all__ = ["EscalationGate"]


@dataclass
class _Escalations:
    """How often a tier answered when it was reached by escalation, per task family."""

    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def observe(self, family: str, tier: str, success: bool) -> None:
        row = self.counts.setdefault((family, tier), [0, 0])
        row[0] += int(success)
        row[1] += 1

    def get(self, family: str, tier: str) -> tuple[int, int]:
        s, n = self.counts.get((family, tier), (0, 0))
        return s, n


class EscalationGate:
    """Refuses an escalation (or a commit) whose predicted return does not clear the gate.

    The prediction for an escalation to tier ``j`` is ``p`` = the policy's ``p̂_j`` blended
    with how often ``j`` answered *after an earlier tier failed* in the same task family
    (``prior_weight`` pseudo-observations of ``p̂_j``), since a question that beat the cheap
    tier is often a hard one; with fewer than ``min_evidence`` observations of ``j`` the
    policy's estimate is not trusted and ``p = 1`` (nothing known: let it through).

    Parameters
    ----------
    whatif:
        The gate deciding; by default one with ``min_ratio=1`` on ``bus``.
    lam:
        λ: what one unit of C is worth against a verified answer.
    keep:
        Decisions kept in ``whatif.decisions`` (the last ones; every one is also published).
    """

    def __init__(
        self,
        whatif: WhatIfGate | None = None,
        *,
        lam: float = 1e-4,
        bus: EventBus | None = None,
        prior_weight: float = 2.0,
        min_evidence: int = 3,
        keep: int = 1000,
    ) -> None:
        self.whatif = whatif or WhatIfGate(min_ratio=1.0, bus=bus, source="route.gate")
        self.lam = lam
        self.prior_weight = prior_weight
        self.min_evidence = min_evidence
        self.keep = keep  # decisions kept in memory (every one is published on the bus)
        self.escalations = _Escalations()
        self.spans = _Escalations()  # field answers accepted, per (family, span tier)

    def forget(self) -> None:
        """Drop what was learned about escalations (before re-learning a history)."""
        self.escalations = _Escalations()
        self.spans = _Escalations()

    def _decide(self, name: str, dry_run: Any, **kw: Any) -> Decision[Any]:
        """The what-if gate's decision, keeping only the last ``keep`` in memory: a router's
        gate lives as long as its kernel or server and judges every escalation."""
        decision = self.whatif.decide(name, dry_run, **kw)
        if len(self.whatif.decisions) > 2 * self.keep:
            del self.whatif.decisions[: -self.keep]
        return decision

    def _blend(self, s: int, n: int, estimate: TierEstimate | None) -> tuple[float, float]:
        """``(p, p̂)``: ``s`` of ``n`` observed, with ``prior_weight`` pseudo-observations of the
        policy's ``p̂`` (1 when it knows the tier from fewer than ``min_evidence`` requests)."""
        known = estimate is not None and estimate.n >= self.min_evidence
        p_marginal = estimate.p if known and estimate is not None else 1.0
        return (s + self.prior_weight * p_marginal) / (n + self.prior_weight), p_marginal

    def predict(self, family: str, tier: str, estimate: TierEstimate | None) -> Prediction:
        """What escalating to ``tier`` is predicted to return and cost."""
        s, n = self.escalations.get(family, tier)
        p, p_marginal = self._blend(s, n, estimate)
        cost = estimate.cost if estimate is not None else 0.0
        return Prediction(
            gain=p,
            cost=self.lam * cost,
            detail={
                "p_policy": p_marginal,
                "after_failure": f"{s}/{n}",
                "C": round(cost, 1),
                "family": family,
            },
        )

    def escalate(
        self,
        family: str,
        from_tier: str,
        to_tier: str,
        estimate: TierEstimate | None,
        *,
        workflow_id: str | None = None,
    ) -> Decision[Any]:
        """Judge escalating one request from ``from_tier`` to ``to_tier`` (published)."""
        return self._decide(
            f"escalate {from_tier}->{to_tier}",
            self.predict(family, to_tier, estimate),
            region={"from": from_tier, "to": to_tier},
            workflow_id=workflow_id,
        )

    def span(
        self,
        family: str,
        pointer: str,
        tier: str,
        estimate: TierEstimate | None,
        cost: float,
        *,
        workflow_id: str | None = None,
    ) -> Decision[Any]:
        """Judge asking span tier ``tier`` for field ``pointer`` at an estimated C of ``cost``.

        The gain is how often ``tier``'s field answers were accepted in ``family``, blended with
        ``prior_weight`` pseudo-observations of the policy's ``p̂`` for the tier (1 while the
        policy knows it from fewer than ``min_evidence`` requests, or not at all: a CAS).
        """
        s, n = self.spans.get(family, tier)
        p, p_marginal = self._blend(s, n, estimate)
        prediction = Prediction(
            gain=p,
            cost=self.lam * cost,
            detail={
                "p_policy": p_marginal,
                "accepted": f"{s}/{n}",
                "C": round(cost, 1),
                "family": family,
            },
        )
        return self._decide(
            f"span {pointer or '/'} -> {tier}",
            prediction,
            region={"field": pointer, "to": tier},
            workflow_id=workflow_id,
        )

    def commit(
        self, txn: Transaction, dry_run: Callable[[], Prediction] | Prediction, **kw: Any
    ) -> Any:
        """Commit a prepared two-phase tool call only if ``dry_run`` predicts it pays.

        Returns the commit's result. A refusal aborts the transaction (logged with the gate's
        reason) and raises :class:`TransactionAbortedError`.
        """
        decision = self._decide(
            f"commit {txn.tool.name}",
            dry_run,
            region={"txn": txn.id},
            workflow_id=txn.workflow_id,
        )
        if not decision.allowed:
            reason = f"what-if gate: {decision.reason}"
            txn.abort(reason)
            msg = f"transaction {txn.id} not committed: {reason}"
            raise TransactionAbortedError(msg, workflow_id=txn.workflow_id)
        return txn.commit(**kw)
