"""The ``coreason`` comm: hello, throttled event batches out, intents in, nothing on bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from comm.base_comm import BaseComm
from coreason_runtime import Coordinator, Event, EventType

from coreason_lab import CommBridge, Controls
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
    b = CommBridge(rt, Controls(rt.bus), max_per_second=10)
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
        rt.bus.emit(EventType.CACHE_HIT, workflow_id="wf", i=i)
    throttle = bridge.open_comms[opened.comm_id][1]
    throttle.flush()
    batches = [m for m in opened.sent if m["type"] == "events"]
    assert sum(len(b["events"]) for b in batches) == 30
    assert batches[-1]["events"][-1]["type"] == "cache.hit"


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


def test_event_json_is_json_safe_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREASON_ORACLE_API_KEY", "sk-SECRET")
    body = event_json(
        Event(type=EventType.LOG, data={"obj": object(), "api_key": "x", "msg": "auth sk-SECRET"})
    )
    assert "api_key" not in body["data"] and body["data"]["msg"] == "auth ***"
    assert body["data"]["obj"].startswith("<object object")


def test_events_json_cuts_secrets_anywhere_in_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from coreason_lab._comm import events_json

    monkeypatch.setenv("COREASON_ORACLE_API_KEY", "sk-SECRET")
    clean = Event(type=EventType.LOG, data={"msg": "nothing to hide", "n": 3})
    keyed = Event(type=EventType.LOG, data={"nested": {"Authorization": "Bearer x"}})
    valued = Event(type=EventType.LOG, data={"items": ["a", "key sk-SECRET here"]})
    plain = events_json([clean, clean])  # the fast path: nothing secret-looking in the text
    assert [b["data"] for b in plain] == [{"msg": "nothing to hide", "n": 3}] * 2
    out = events_json([clean, keyed, valued])
    assert out[0]["data"] == {"msg": "nothing to hide", "n": 3}
    assert out[1]["data"] == {"nested": {}}
    assert out[2]["data"] == {"items": ["a", "key *** here"]}
    assert "sk-SECRET" not in json.dumps(out) and "Bearer" not in json.dumps(out)
