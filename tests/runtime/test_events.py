"""Typed events: one payload model per event type, built by the bus, read back from JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from coreason_runtime import Event, EventBus, EventPayloadError, EventType, events
from coreason_runtime.events import (
    PAYLOADS,
    EventPayload,
    RbfGated,
    TaskAborted,
    TokensBatch,
    WhatIfDecided,
    WorkflowControlChanged,
)
from pydantic import ValidationError

from tests.runtime import _emit_sites

REPO = Path(__file__).resolve().parents[2]
SOURCES = (REPO / "runtime" / "src" / "coreason_runtime", REPO / "coreason_lab")


def _oracle_batch(bus: EventBus) -> Event:
    return bus.emit(
        EventType.TOKENS,
        workflow_id="wf",
        source="tier.oracle",
        tier="oracle",
        delta='{"value"',
        tokens_out=3,
        total_out=19,
    )


# --- the registry --------------------------------------------------------------------------


def test_every_event_type_has_a_payload_class() -> None:
    assert set(PAYLOADS) == set(EventType)
    assert all(issubclass(cls, EventPayload) for cls in PAYLOADS.values())


def test_payloads_are_frozen_and_refuse_unknown_fields() -> None:
    for cls in set(PAYLOADS.values()):
        assert cls.model_config.get("frozen") is True, cls
        assert cls.model_config.get("extra") == "forbid", cls


def test_the_events_module_exports_every_payload_class() -> None:
    exported = {getattr(events, name) for name in events.__all__ if name != "PAYLOADS"}
    assert set(PAYLOADS.values()) <= exported
    assert events.__all__ == sorted(events.__all__, key=lambda n: (not n.isupper(), n))


# --- building payloads ---------------------------------------------------------------------


def test_emit_builds_the_registered_payload() -> None:
    event = _oracle_batch(EventBus())
    assert isinstance(event.data, TokensBatch)
    assert (event.data.tier, event.data.tokens_out, event.data.total_out) == ("oracle", 3, 19)


def test_an_unknown_field_raises_and_names_it() -> None:
    with pytest.raises(EventPayloadError, match=r"unknown field\(s\) \['tokens'\]"):
        EventBus().emit(EventType.TOKENS, tier="local", delta="a", tokens=4)


def test_a_missing_field_raises_and_publishes_nothing() -> None:
    bus = EventBus()
    with pytest.raises(EventPayloadError, match=r"missing field\(s\) \['dag_id'\]"):
        bus.emit(EventType.TASK_ABORTED, task="a", reason="plan changed")
    assert bus.history() == []


def test_a_mistyped_field_raises() -> None:
    with pytest.raises(EventPayloadError, match=r"tokens\.batch event \(TokensBatch\)"):
        EventBus().emit(EventType.TOKENS, tier=None, delta="", tokens_out="many", total_out=1)


def test_an_event_refuses_another_types_payload() -> None:
    payload = TaskAborted(dag_id="d", task="a", reason="x")
    with pytest.raises(ValidationError, match="carries TaskFinished, not TaskAborted"):
        Event(type=EventType.TASK_FINISHED, data=payload)


def test_workflow_controls_share_one_payload() -> None:
    kinds = [t for t in EventType if t.value.startswith("workflow.")]
    assert {PAYLOADS[t] for t in kinds} == {WorkflowControlChanged}
    assert {t.value for t in kinds} == {
        "workflow.paused",
        "workflow.resumed",
        "workflow.preempted",
        "workflow.aborted",
    }


# --- JSON round trips ----------------------------------------------------------------------


def test_a_dumped_event_validates_back_into_its_payload_class() -> None:
    event = _oracle_batch(EventBus())
    again = Event.model_validate_json(event.model_dump_json())
    assert type(again.data) is TokensBatch and again == event
    assert Event.model_validate(json.loads(event.model_dump_json())) == event


def test_a_round_trip_keeps_infinite_floats() -> None:
    event = EventBus().emit(
        EventType.RBF_GATED, t=None, remaining=math.inf, granted=2, refused=1, reason="lowered"
    )
    again = Event.model_validate_json(event.model_dump_json())
    assert isinstance(again.data, RbfGated) and again.data.remaining == math.inf


def test_a_dict_payload_is_validated_into_the_class_of_its_type() -> None:
    event = Event(
        type=EventType.WHATIF_REFUSED,
        data={
            "name": "refine",
            "allowed": False,
            "reason": "no memory",
            "predicted_gain": None,
            "predicted_cost": None,
            "dry_run_s": None,
            "region": [0, 1],
            "detail": {},
        },
    )
    assert isinstance(event.data, WhatIfDecided) and event.data.region == [0, 1]


# --- every emit site matches its payload ---------------------------------------------------


def _sources() -> dict[Path, str]:
    return {
        path.relative_to(REPO): path.read_text()
        for root in SOURCES
        for path in sorted(root.rglob("*.py"))
    }


def test_every_emit_site_passes_exactly_its_payloads_fields() -> None:
    sites, unmatched = _emit_sites.collect(_sources())
    assert len(sites) > 80  # the walker really finds the emitters
    assert unmatched == []
    assert _emit_sites.problems(sites) == []


def test_the_site_check_finds_unknown_and_missing_fields() -> None:
    source = (
        "KINDS = {1: EventType.WORKFLOW_PAUSED, 2: EventType.WORKFLOW_ABORTED}\n"
        "def _emit(self, type_, **data):\n"
        "    self.bus.emit(type_, workflow_id=None, dag_id='d', **data)\n"
        "def f(bus, self, kind):\n"
        "    bus.emit(EventType.TOKENS, workflow_id='w', tier='local', delta='a', tokens=4)\n"
        "    self._emit(EventType.TASK_ABORTED, task='a', reason='r')\n"
        "    self._emit(EventType.TASK_RESUMED, task='a')\n"
        "    bus.emit(EventType.SIM_STEP, **row, t=0.0, typo=1)\n"
        "    self._bus.emit(KINDS[kind], state='paused', intent='pause')\n"
        "    self._bus.emit(kind(), state='paused')\n"
    )
    sites, unmatched = _emit_sites.collect({Path("pkg/mod.py"): source})
    assert unmatched == ["pkg/mod.py:10: a bus emit whose event type cannot be read"]
    assert _emit_sites.problems(sites) == [
        "pkg/mod.py:5: EventType.TOKENS (TokensBatch) unknown ['tokens'] "
        "missing ['tokens_out', 'total_out']",
        "pkg/mod.py:7: EventType.TASK_RESUMED (TaskResumed) unknown [] missing ['attempt']",
        "pkg/mod.py:8: EventType.SIM_STEP (SimStep) unknown ['typo'] missing []",
        "pkg/mod.py:9: EventType.WORKFLOW_PAUSED (WorkflowControlChanged) unknown ['intent'] "
        "missing ['previous']",
        "pkg/mod.py:9: EventType.WORKFLOW_ABORTED (WorkflowControlChanged) unknown ['intent'] "
        "missing ['previous']",
    ]
