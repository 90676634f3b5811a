"""Success and cost per tier: verified where verification ran, validated otherwise."""

from __future__ import annotations

from coreason_runtime.route import outcome, tier_outcomes
from coreason_runtime.tensor import Attempt, Result
from coreason_runtime.verify import Failure, Verdict


def _attempts() -> list[Attempt]:
    return [
        Attempt(tier="local", index=1, cost=10, tokens_in=5, tokens_out=2),
        Attempt(tier="local", index=2, cost=12, tokens_in=5, tokens_out=3),
        Attempt(tier="oracle", index=1, cost=90, tokens_in=30, tokens_out=20, ok=True),
    ]


def test_a_validated_answer_counts_as_a_success_without_verification() -> None:
    res = Result(value=1, tier="oracle", attempts=_attempts(), cost=112.0, workflow_id="wf")
    assert outcome(res).success is True and outcome(res).cost == 112.0


def test_with_verifiers_only_a_verified_answer_is_a_success() -> None:
    kw = {"value": 1, "tier": "oracle", "attempts": _attempts(), "cost": 112.0, "workflow_id": "w"}
    failed = Verdict(failures=[Failure("/d", "not the derivative", "derivative")])
    assert outcome(Result(**kw, verified=False, verification=failed)).success is False
    passed = Verdict(methods={"derivative": "sympy"})
    assert outcome(Result(**kw, verified=True, verification=passed)).success is True
    # no verifier named: verified is False because nothing was asked, and validated counts
    assert outcome(Result(**kw, verified=False, verification=None)).success is True


def test_each_tier_earns_its_own_cost_and_only_the_answerer_succeeds() -> None:
    res = Result(value=1, tier="oracle", attempts=_attempts(), cost=112.0, workflow_id="wf")
    local, oracle = tier_outcomes(res.attempts, outcome(res), res.tier)
    assert (local.tier, local.success, local.cost, local.tokens_out, local.position) == (
        "local",
        False,
        22,
        5,
        0,
    )
    assert (oracle.success, oracle.cost, oracle.position) == (True, 90, 1)
    assert [o.success for o in tier_outcomes(res.attempts, None, None)] == [False, False]


def test_span_repairs_paid_beside_the_attempts_are_the_answering_tiers_cost() -> None:
    # C 112 in attempts and 30 more for a field answered by another tier (Result.cost has both)
    res = Result(value=1, tier="oracle", attempts=_attempts(), cost=142.0, workflow_id="wf")
    local, oracle = tier_outcomes(res.attempts, outcome(res), res.tier)
    assert (local.cost, oracle.cost) == (22, 120)
