"""The escalation gate: predictions from the policy and from escalations, and tool commits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import TransactionAbortedError
from coreason_runtime.events import WhatIfDecided
from coreason_runtime.route import EscalationGate, TierEstimate
from coreason_runtime.sim import Prediction
from coreason_runtime.txn import ToolTransactions, python_tool

SQUARE = python_tool("square", "result = inputs['x'] ** 2")


def _est(p: float, cost: float, n: int = 10) -> TierEstimate:
    return TierEstimate(p=p, cost=cost, reward=p - 1e-4 * cost, optimistic=p, n=n)


@pytest.fixture
def tt(tmp_path: Path, bus: EventBus) -> Iterator[ToolTransactions]:
    manager = ToolTransactions(tmp_path / "home", bus)
    yield manager
    manager.close()


def test_an_escalation_pays_when_p_exceeds_lambda_c(bus: EventBus) -> None:
    gate = EscalationGate(lam=1e-4, bus=bus)
    assert gate.escalate("calculus", "local", "oracle", _est(0.9, 5000)).allowed
    refused = gate.escalate("calculus", "local", "oracle", _est(0.3, 5000), workflow_id="wf")
    assert not refused.allowed and "gain/cost 0.6 < min_ratio 1" in refused.reason
    (event,) = bus.history([EventType.WHATIF_REFUSED])
    assert isinstance(event.data, WhatIfDecided) and event.workflow_id == "wf"
    assert event.data.detail["p_policy"] == 0.3


def test_what_followed_earlier_failures_weighs_in(bus: EventBus) -> None:
    gate = EscalationGate(lam=1e-4, bus=bus, prior_weight=2.0)
    for _ in range(8):
        gate.escalations.observe("linear_algebra", "oracle", False)
    # the policy's marginal p=0.9 says go; after a failure the oracle answered 0 of 8 times
    pred = gate.predict("linear_algebra", "oracle", _est(0.9, 5000))
    assert pred.gain == pytest.approx(1.8 / 10)
    assert not gate.escalate("linear_algebra", "local", "oracle", _est(0.9, 5000)).allowed
    assert gate.escalate("calculus", "local", "oracle", _est(0.9, 5000)).allowed


def test_without_evidence_the_gate_lets_the_tier_prove_itself(bus: EventBus) -> None:
    gate = EscalationGate(lam=1e-4, bus=bus)
    assert gate.predict("x", "oracle", _est(0.01, 5000, n=0)).gain == 1.0
    assert gate.escalate("x", "local", "oracle", None).allowed  # a tier the policy never saw


def test_the_same_gate_guards_a_tool_commit(tt: ToolTransactions, bus: EventBus) -> None:
    gate = EscalationGate(lam=1.0, bus=bus)
    txn = tt.prepare(SQUARE, {"x": 6}, est_cost=1.0, consumers=["lemma"])
    assert gate.commit(txn, Prediction(gain=2.0, cost=1.0), timeout=30) == 36

    doomed = tt.prepare(SQUARE, {"x": 7}, est_cost=50.0, consumers=["lemma"])
    with pytest.raises(TransactionAbortedError, match="what-if gate: gain/cost"):
        gate.commit(doomed, lambda: Prediction(gain=1.0, cost=50.0))
    assert doomed.state == "aborted"
    assert "what-if gate" in tt.log.get(doomed.id)["error"]
    names = [
        e.data.name
        for e in bus.history([EventType.WHATIF_REFUSED])
        if isinstance(e.data, WhatIfDecided)
    ]
    assert names == ["commit square"]


def test_a_span_escalation_is_judged_on_accepted_field_answers(bus: EventBus) -> None:
    gate = EscalationGate(lam=1e-4, bus=bus, prior_weight=2.0)
    assert gate.span("calculus", "/d", "oracle", None, 5000).allowed  # nothing known yet
    for _ in range(6):
        gate.spans.observe("calculus", "oracle", False)
    refused = gate.span("calculus", "/d", "oracle", _est(0.9, 5000), 5000, workflow_id="wf")
    assert not refused.allowed  # p = (0 + 2·0.9) / 8 = 0.225 < λ·C = 0.5
    assert refused.prediction.gain == pytest.approx(1.8 / 8)
    assert refused.prediction.cost == pytest.approx(0.5)
    assert gate.span("mechanics", "/d", "oracle", _est(0.9, 5000), 5000).allowed  # per family
    (event,) = bus.history([EventType.WHATIF_REFUSED])
    assert isinstance(event.data, WhatIfDecided) and event.data.name == "span /d -> oracle"


def test_the_gate_keeps_only_its_last_decisions_in_memory(bus: EventBus) -> None:
    gate = EscalationGate(lam=1e-4, bus=bus, keep=10)
    for i in range(55):
        gate.escalate("x", "local", "oracle", None, workflow_id=f"wf{i}")
    assert 10 <= len(gate.whatif.decisions) <= 20
