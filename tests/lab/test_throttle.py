"""The throttle between the bus and the views: rate, batching, dropping, closing."""

from __future__ import annotations

import threading

from coreason_runtime import Event, EventBus, EventType
from coreason_runtime.events import CacheLookupHit

from coreason_lab import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _emit(bus: EventBus, n: int) -> None:
    for i in range(n):
        bus.emit(
            EventType.CACHE_HIT,
            workflow_id="wf",
            key=f"k{i}",
            kind="integral",
            cross_workflow=False,
            admitted_by="wf",
            verifier="sympy",
        )


def test_events_within_one_interval_arrive_as_one_batch(bus: EventBus) -> None:
    clock, batches = Clock(), []
    t = Throttle(bus, ["cache"], max_per_second=10, clock=clock, start=False)
    t.attach(batches.append)
    _emit(bus, 100)
    assert t.pump() == 100
    _emit(bus, 5)
    clock.now = 0.05  # half an interval later: held back
    assert t.pump() == 0
    clock.now = 0.1
    assert t.pump() == 5
    assert [len(b) for b in batches] == [100, 5]


def test_nothing_is_buffered_when_no_view_is_attached(bus: EventBus) -> None:
    t = Throttle(bus, None, start=False)
    _emit(bus, 50)
    assert (t.pending, t.dropped) == (0, 50)


def test_detaching_the_last_view_drops_the_buffer(bus: EventBus) -> None:
    t = Throttle(bus, None, start=False)
    sink = lambda batch: None  # noqa: E731
    t.attach(sink)
    _emit(bus, 7)
    t.detach(sink)
    assert (t.pending, t.dropped) == (0, 7)


def test_paused_throttle_drops_and_resumes(bus: EventBus) -> None:
    batches: list[list[Event]] = []
    t = Throttle(bus, None, start=False)
    t.attach(batches.append)
    t.pause()
    _emit(bus, 3)
    t.resume()
    _emit(bus, 2)
    t.flush()
    assert [len(b) for b in batches] == [2] and t.dropped == 3


def test_buffer_is_capped_and_counts_what_it_drops(bus: EventBus) -> None:
    batches: list[list[Event]] = []
    t = Throttle(bus, None, max_buffer=10, start=False)
    t.attach(batches.append)
    _emit(bus, 25)
    t.flush()
    assert len(batches[0]) == 10 and t.dropped == 15
    newest = batches[0][-1].data
    assert isinstance(newest, CacheLookupHit) and newest.key == "k24"  # the newest survive


def test_only_subscribed_areas_are_buffered(bus: EventBus) -> None:
    batches: list[list[Event]] = []
    t = Throttle(bus, ["budget"], start=False)
    t.attach(batches.append)
    _emit(bus, 3)
    bus.emit(EventType.BUDGET_SET, workflow_id="wf", ceiling=5, spent=0.0)
    t.flush()
    assert [e.type for e in batches[0]] == [EventType.BUDGET_SET]


def test_close_unsubscribes_and_stops_the_thread(bus: EventBus) -> None:
    before = bus.subscriber_count
    t = Throttle(bus, None)
    t.attach(lambda b: None)
    t.close()
    assert bus.subscriber_count == before
    assert t._thread is not None and not t._thread.is_alive()


def test_delivery_thread_delivers_without_pumping(bus: EventBus) -> None:
    got = threading.Event()
    t = Throttle(bus, None, max_per_second=50)
    t.attach(lambda batch: got.set())
    _emit(bus, 1)
    assert got.wait(5)
    t.close()


def test_a_failing_view_does_not_stop_the_others(bus: EventBus) -> None:
    batches: list[list[Event]] = []

    def broken(batch: list[Event]) -> None:
        raise RuntimeError("view bug")

    t = Throttle(bus, None, start=False)
    t.attach(broken)
    t.attach(batches.append)
    _emit(bus, 2)
    t.flush()
    assert len(batches) == 1
