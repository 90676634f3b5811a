"""The generic what-if gate: thresholds, logging, events, guarded calls."""

from __future__ import annotations

import math

import pytest
from coreason_runtime import ConfigurationError, EventBus
from coreason_runtime._events import EventType
from coreason_runtime.sim import Prediction, WhatIfGate


def test_gate_allows_when_predicted_gain_clears_min_gain() -> None:
    gate = WhatIfGate(min_gain=1.0)
    assert gate.decide("x", lambda: Prediction(2.0, 10.0)).allowed


def test_gate_refuses_below_min_gain_and_logs_the_prediction() -> None:
    gate = WhatIfGate(min_gain=1.0)
    d = gate.decide("x", lambda: Prediction(0.5, 10.0, {"why": "tiny"}))
    assert not d.allowed
    assert gate.refusals == [d]
    assert d.prediction.detail == {"why": "tiny"}
    assert "min_gain" in d.reason


def test_gate_refuses_when_gain_per_cost_is_too_low() -> None:
    gate = WhatIfGate(min_ratio=0.5)
    assert not gate.decide("x", lambda: Prediction(1.0, 10.0)).allowed
    assert gate.decide("y", lambda: Prediction(6.0, 10.0)).allowed


def test_gate_refuses_over_max_cost() -> None:
    gate = WhatIfGate(max_cost=5.0)
    assert not gate.decide("x", lambda: Prediction(100.0, 6.0)).allowed


def test_gate_refuses_a_non_finite_prediction() -> None:
    gate = WhatIfGate()
    assert not gate.decide("x", lambda: Prediction(math.nan, 1.0)).allowed


def test_run_calls_the_expensive_function_only_when_allowed() -> None:
    calls: list[int] = []
    gate = WhatIfGate(min_gain=1.0)
    refused = gate.run("x", lambda: Prediction(0.1, 1.0), lambda: calls.append(1) or 7)
    allowed = gate.run("y", lambda: Prediction(3.0, 1.0), lambda: calls.append(2) or 8)
    assert calls == [2]
    assert refused.value is None and not refused.allowed
    assert allowed.value == 8
    assert gate.decisions[-1].value == 8


def test_decisions_are_published_with_their_prediction() -> None:
    bus = EventBus()
    gate = WhatIfGate(min_gain=1.0, bus=bus, workflow_id="wf")
    gate.decide("a", lambda: Prediction(2.0, 3.0), region=[0, 1, 0, 1])
    gate.decide("b", lambda: Prediction(0.5, 3.0))
    allowed = bus.history([EventType.WHATIF_ALLOWED])
    refused = bus.history([EventType.WHATIF_REFUSED])
    assert [e.data.name for e in allowed] == ["a"]
    assert allowed[0].data.region == [0, 1, 0, 1]
    assert refused[0].data.predicted_gain == 0.5
    assert refused[0].workflow_id == "wf"


def test_gate_rejects_non_finite_thresholds() -> None:
    with pytest.raises(ConfigurationError, match="min_gain"):
        WhatIfGate(min_gain=math.inf)
    with pytest.raises(ConfigurationError, match="max_cost"):
        WhatIfGate(max_cost=0.0)
