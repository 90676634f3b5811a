"""The ``coreason`` comm: hello, throttled event batches out, intents in, nothing on bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from comm.base_comm import BaseComm
from coreason_runtime import Coordinator, Event, EventType
from coreason_runtime.events import Log, WhatIfDecided

from coreason_lab import CommBridge
from coreason_lab._comm import event_json


class RecordingComm(BaseComm):
    """A comm whose transport records what the kernel would send (comm's own extension point)."""

    def __init__(self, **kwargs: Any) -> None:
        self.sent: list[dict[str, Any]] = []
        super().__init__(target_name="coreason", primary=False, **kwargs)

    def publish_msg(
        self,
        msg_type: str,
        data: Any = None,
        metadata: Any = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        if msg_type == "comm_msg":
            self.sent.append(data)


@pytest.fixture
def bridge(rt: Coordinator) -> CommBridge:
    b = CommBridge(rt, max_per_second=10)
    yield b
    b.close()


@pytest.fixture
def opened(bridge: CommBridge) -> RecordingComm:
    c = RecordingComm()
    bridge.on_open(c, {})
    return c


def test_open_sends_hello_with_intents_and_ledgers(opened: RecordingComm) -> None:
    hello = opened.sent[0]
    assert hello["type"] == "hello" and hello["intents"] == ["pause", "resume", "abort", "preempt"]
    assert any(led["workflow_id"] == "default" for led in hello["ledgers"])


def test_events_go_out_in_throttled_batches(
    rt: Coordinator, bridge: CommBridge, opened: RecordingComm
) -> None:
    for i in range(30):
        rt.bus.emit(EventType.LOG, workflow_id="wf", message=f"line {i}")
    throttle = bridge.open_comms[opened.comm_id][1]
    throttle.flush()
    batches = [m for m in opened.sent if m["type"] == "events"]
    assert sum(len(b["events"]) for b in batches) == 30
    assert batches[-1]["events"][-1]["type"] == "runtime.log"
    assert batches[-1]["events"][-1]["data"] == {
        "message": "line 29",
        "retry_in": None,
        "attempt": None,
    }


def test_an_intent_is_applied_and_acknowledged(bridge: CommBridge, opened: RecordingComm) -> None:
    opened.handle_msg(
        {"content": {"data": {"type": "intent", "intent": "pause", "workflow_id": "wf"}}}
    )
    assert opened.sent[-1] == {
        "type": "ack",
        "intent": "pause",
        "workflow_id": "wf",
        "state": "paused",
    }
    assert bridge.controls.state("wf") == "paused"


@pytest.mark.parametrize(
    "data",
    [
        "pause",
        {"type": "intent", "intent": "explode", "workflow_id": "wf"},
        {"type": "intent", "intent": "pause"},
        {"type": "dance"},
    ],
)
def test_a_malformed_message_is_answered_with_an_error_and_changes_nothing(
    bridge: CommBridge, data: Any
) -> None:
    reply = bridge.handle(data)
    assert reply["type"] == "error" and bridge.controls.workflows() == []


def test_closing_the_comm_unsubscribes(rt: Coordinator, bridge: CommBridge) -> None:
    before = rt.bus.subscriber_count
    c = RecordingComm()
    bridge.on_open(c, {})
    c.handle_close({})
    assert rt.bus.subscriber_count == before and bridge.open_comms == {}


def _gated(region: Any = None, **detail: Any) -> Event:
    """An event whose payload holds free-form values: what a caller gated, and why."""
    payload = WhatIfDecided(
        name="refine",
        allowed=True,
        reason="pays",
        predicted_gain=1.0,
        predicted_cost=0.5,
        dry_run_s=0.01,
        region=region,
        detail=detail,
    )
    return Event(type=EventType.WHATIF_ALLOWED, data=payload)


def test_event_json_is_json_safe_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREASON_ORACLE_API_KEY", "sk-SECRET")
    body = event_json(_gated(object(), api_key="x", msg="auth sk-SECRET"))
    assert body["data"]["detail"] == {"msg": "auth ***"}
    assert body["data"]["region"].startswith("<object object")
    line = event_json(Event(type=EventType.LOG, data=Log(message="auth sk-SECRET")))
    assert line["data"]["message"] == "auth ***"


def test_events_json_cuts_secrets_anywhere_in_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from coreason_lab._comm import events_json

    monkeypatch.setenv("COREASON_ORACLE_API_KEY", "sk-SECRET")
    clean = _gated(msg="nothing to hide", n=3)
    keyed = _gated(nested={"Authorization": "Bearer x"})
    valued = _gated(["a", "key sk-SECRET here"])
    plain = events_json([clean, clean])  # the fast path: nothing secret-looking in the text
    assert [b["data"]["detail"] for b in plain] == [{"msg": "nothing to hide", "n": 3}] * 2
    out = events_json([clean, keyed, valued])
    assert out[0]["data"]["detail"] == {"msg": "nothing to hide", "n": 3}
    assert out[1]["data"]["detail"] == {"nested": {}}
    assert out[2]["data"]["region"] == ["a", "key *** here"]
    assert "sk-SECRET" not in json.dumps(out) and "Bearer" not in json.dumps(out)


def test_an_event_sent_to_the_frontend_validates_back_into_its_payload() -> None:
    event = _gated([0, 1], block=[2, 3])
    again = Event.model_validate(event_json(event))
    assert again == event and isinstance(again.data, WhatIfDecided)
