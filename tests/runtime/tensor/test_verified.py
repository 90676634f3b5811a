"""Verified answers on the request path: verdicts, span tiers, retries, escalation, the cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from coreason_runtime import (
    Coordinator,
    EpistemicYieldError,
    EventType,
    RuntimeConfig,
    VerifierError,
    VerifierTimeoutError,
)
from coreason_runtime import verifiers as V
from coreason_runtime.models import LoadedModel
from coreason_runtime.tensor import ScriptedSteerableTier, ScriptedTier
from coreason_runtime.tensor._compiler import UniversalCompiler
from coreason_runtime.tensor._local import LocalTier
from pydantic import BaseModel, Field


class Derivative(BaseModel):
    expression: str
    derivative: str


GOOD = '{"expression": "x**2", "derivative": "2*x"}'
WRONG = '{"expression": "x**2", "derivative": "x**2*ln(x)"}'
CHECK = V.derivative(of="expression", result="derivative")


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=False))
    runtime.budgets.set("wf", ceiling=20_000)
    yield runtime
    runtime.close()


def _ledger_exact(rt: Coordinator, cost: float) -> None:
    assert rt.budgets.spent("wf") == pytest.approx(cost)


def test_a_value_its_verifiers_pass_is_verified(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedSteerableTier("local", [GOOD])])
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=CHECK)
    assert res.verified and res.repairs == []
    assert res.verification is not None and res.verification.methods == {
        "derivative(/derivative)": "sympy"
    }
    assert "verified" in res._repr_html_() and res.metadata()["verified"] is True


def test_without_verifiers_a_result_says_it_is_unverified(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedSteerableTier("local", [WRONG])])
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    assert not res.verified and res.verification is None
    assert "unverified" in res._repr_html_()


def test_the_cas_tier_repairs_the_rejected_field_and_is_paid_for(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("oracle", [WRONG])])
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=CHECK)
    assert res.verified and res.value.derivative == "2*x"
    (repair,) = res.repairs
    assert (repair.field, repair.tier, repair.accepted) == ("/derivative", "cas", True)
    assert repair.cost > 0 and repair.tokens_in > 0
    assert res.cost == pytest.approx(res.attempts[0].cost + repair.cost)
    _ledger_exact(rt, res.cost)
    assert rt.budgets.get("wf").by_tier["cas"] == pytest.approx(repair.cost)
    repaired = rt.bus.history([EventType.FIELD_REPAIRED])
    assert [(e.data.tier, e.data.accepted) for e in repaired] == [("cas", True)]


def test_without_span_tiers_a_rejected_value_is_retried_whole_with_the_failure_fed_back(
    rt: Coordinator,
) -> None:
    local = ScriptedTier("local", [WRONG, GOOD])
    rt.router.set_tiers([local])
    policy = V.policy(CHECK, span_tiers=())
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=policy)
    assert res.verified
    assert [(a.ok, a.error_type) for a in res.attempts] == [
        (False, "VerificationFailure"),
        (True, None),
    ]
    fed_back = local.requests[1].messages[-1]["content"]
    assert "/derivative" in fed_back and "expected 2*x" in fed_back


def test_rejected_everywhere_yields_with_the_failing_field(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", [WRONG], repeat_last=True)])
    policy = V.policy(CHECK, span_tiers=())
    with pytest.raises(EpistemicYieldError) as info:
        rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=policy)
    (failure,) = info.value.failures
    assert failure.pointer == "/derivative" and "expected 2*x" in failure.message
    assert "Still rejected: /derivative" in str(info.value)
    _ledger_exact(rt, sum(a.cost for a in info.value.attempts))


def test_the_request_escalates_when_every_local_answer_is_rejected(rt: Coordinator) -> None:
    wrong = [WRONG, WRONG.replace("x**2*ln(x)", "x"), WRONG.replace("x**2*ln(x)", "2")]
    local = ScriptedSteerableTier("local", wrong)  # three distinct rejected answers
    rt.router.set_tiers([local, ScriptedTier("oracle", [GOOD])])
    policy = V.policy(CHECK, span_tiers=())
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=policy)
    assert res.tier == "oracle" and res.verified
    assert [a.tier for a in res.attempts] == ["local"] * 3 + ["oracle"]


def test_a_remote_tier_is_asked_for_the_field_alone(rt: Coordinator) -> None:
    oracle = ScriptedTier("oracle", ['{"value": "2*x"}'])
    rt.router.set_tiers([ScriptedSteerableTier("local", [WRONG]), oracle])
    policy = V.policy(CHECK, span_tiers=("oracle",))
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=policy)
    assert res.tier == "local" and res.verified
    assert [(r.tier, r.accepted) for r in res.repairs] == [("oracle", True)]
    question = oracle.requests[0].messages[-1]["content"]
    assert "/derivative" in question and '"x**2*ln(x)"' in question
    _ledger_exact(rt, res.cost)


def test_a_verifier_that_raises_stops_the_request_with_the_ledger_exact(
    rt: Coordinator,
) -> None:
    oracle = ScriptedTier("oracle", [GOOD])
    rt.router.set_tiers([ScriptedTier("local", [GOOD]), oracle])

    def broken(value: Any) -> None:
        raise TypeError("bug")

    with pytest.raises(VerifierError, match="broken") as info:
        rt.router.generate(Derivative, "q", workflow_id="wf", verify=broken)
    assert oracle.requests == []  # neither retried nor escalated
    assert len(info.value.attempts) == 1
    _ledger_exact(rt, info.value.attempts[0].cost)


def test_a_verifier_that_never_returns_times_out(rt: Coordinator) -> None:
    gate = threading.Event()
    rt.router.set_tiers([ScriptedTier("local", [GOOD])])
    policy = V.policy(V.check(lambda v: gate.wait(), "stuck"), timeout=0.2)
    try:
        with pytest.raises(VerifierTimeoutError, match="stuck"):
            rt.router.generate(Derivative, "q", workflow_id="wf", verify=policy)
    finally:
        gate.set()


# --- the subgoal cache ---------------------------------------------------------------------


@pytest.fixture
def cached(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=True))
    runtime.budgets.set("wf", ceiling=20_000)
    yield runtime
    runtime.close()


def test_a_verified_answer_is_cached_and_served_verified(cached: Coordinator) -> None:
    local = ScriptedTier("local", [GOOD])
    cached.router.set_tiers([local])
    cached.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=CHECK)
    again = cached.router.generate(Derivative, "d/dx x**2", workflow_id="wf", verify=CHECK)
    assert again.tier == "cache" and again.verified and again.cost == 0
    assert len(local.requests) == 1


def test_a_sampled_answer_without_verifier_is_never_cached(cached: Coordinator) -> None:
    local = ScriptedTier("local", [GOOD, GOOD])
    cached.router.set_tiers([local])
    cached.router.generate(Derivative, "Tell me one", workflow_id="wf", temperature=0.7)
    assert cached.router.generate(Derivative, "Tell me one", workflow_id="wf").tier == "local"


def test_a_sampled_request_is_not_answered_from_the_cache_unless_asked(
    cached: Coordinator,
) -> None:
    local = ScriptedTier("local", [GOOD, GOOD])
    cached.router.set_tiers([local])
    cached.router.generate(Derivative, "Tell me one", workflow_id="wf")  # greedy: admitted
    hot = cached.router.generate(Derivative, "Tell me one", workflow_id="wf", temperature=0.7)
    assert hot.tier == "local"
    asked = cached.router.generate(
        Derivative, "Tell me one", workflow_id="wf", temperature=0.7, cache=True
    )
    assert asked.tier == "cache"


def test_a_cached_value_its_verifiers_reject_is_not_served(cached: Coordinator) -> None:
    local = ScriptedTier("local", [WRONG, GOOD])
    cached.router.set_tiers([local])
    cached.router.generate(Derivative, "Tell me one", workflow_id="wf")  # greedy, unverified
    policy = V.policy(CHECK, span_tiers=())
    res = cached.router.generate(Derivative, "Tell me one", workflow_id="wf", verify=policy)
    assert res.tier == "local" and res.verified


# --- the local tier repairs in its own session ---------------------------------------------


class Pick(BaseModel):
    label: Literal["alpha", "beta", "gamma", "delta"]
    note: str = Field(max_length=6)


@pytest.fixture
def local_rt(rt: Coordinator, tiny_model: LoadedModel) -> Iterator[Coordinator]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tier = LocalTier(tiny_model, UniversalCompiler(tiny_model, timeout=30), bus=rt.bus)
    rt.router.set_tiers([tier])
    yield rt
    torch.set_num_threads(threads)


def test_the_local_tier_redecodes_the_span_and_the_ledger_pays_every_token(
    local_rt: Coordinator,
) -> None:
    rt = local_rt
    first = rt.router.generate(Pick, "Pick one.", workflow_id="wf", max_tokens=40).value.label
    spent_before = rt.budgets.spent("wf")
    not_first = V.check(lambda v: [("label", "no")] if v.label == first else [], "not-first")
    res = rt.router.generate(
        Pick, "Pick one.", workflow_id="wf", max_tokens=40, verify=V.policy(not_first)
    )
    assert res.verified and res.value.label != first
    (repair,) = res.repairs
    assert (repair.tier, repair.accepted) == ("local", True)
    (attempt,) = res.attempts
    decode_tokens = attempt.tokens_out - repair.tokens_out
    assert repair.tokens_out > 0 and decode_tokens > 0
    assert repair.cost == rt.budgets.cost(repair.tokens_in, repair.tokens_out)
    assert rt.budgets.spent("wf") - spent_before == pytest.approx(res.cost)
    spans = rt.bus.history([EventType.SPAN_REPAIRED])
    assert spans and spans[-1].data.accepted
