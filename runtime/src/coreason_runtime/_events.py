"""Typed runtime events and the in-process event bus every mechanism publishes on.

Every mechanism publishes a pydantic :class:`Event` (or a subclass with typed fields) whose
``type`` is an :class:`EventType`. Subscribers are called synchronously on the publisher's
thread, so they must be cheap: dashboards put a throttle between the bus and the screen,
remote listeners put a queue. A subscriber that raises is logged and never breaks the
publisher. Nothing polls.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Event", "EventBus", "EventType", "Subscription"]

logger = logging.getLogger("coreason_runtime.events")


class EventType(StrEnum):
    """What happened. Values are ``"<area>.<verb>"`` so subscribers can filter by area."""

    # tensor engine: requests, attempts, tokens, escalation
    REQUEST_STARTED = "request.started"
    REQUEST_FINISHED = "request.finished"
    REQUEST_FAILED = "request.failed"
    ATTEMPT_STARTED = "attempt.started"
    ATTEMPT_FINISHED = "attempt.finished"
    ATTEMPT_FAILED = "attempt.failed"
    TOKENS = "tokens.batch"
    ESCALATED = "request.escalated"
    YIELDED = "request.yielded"
    HUMAN_ANSWERED = "request.human_answered"
    SCHEMA_COMPILED = "schema.compiled"
    PREFIX_REUSED = "cache.prefix_reused"
    # budget cage
    BUDGET_SET = "budget.set"
    BUDGET_RESERVED = "budget.reserved"
    BUDGET_CHARGED = "budget.charged"
    BUDGET_RELEASED = "budget.released"
    BUDGET_EXCEEDED = "budget.exceeded"
    BUDGET_RESET = "budget.reset"
    # decode engine
    DECODE_STARTED = "decode.started"
    DECODE_PAUSED = "decode.paused"
    DECODE_RESUMED = "decode.resumed"
    DECODE_INJECTED = "decode.injected"
    DECODE_FINISHED = "decode.finished"
    DECODE_CHECKPOINTED = "decode.checkpointed"
    SPAN_REPAIRED = "decode.span_repaired"
    THUNK_DECLARED = "thunk.declared"
    THUNK_FORCED = "thunk.forced"
    VERIFIER_FAILED = "verifier.failed"
    # scheduling
    DAG_SUBMITTED = "sched.dag_submitted"
    SCHEDULE_DECIDED = "sched.decided"
    CRITICAL_PATH = "sched.critical_path"
    TASK_STARTED = "task.started"
    TASK_PREEMPTED = "task.preempted"
    TASK_RESUMED = "task.resumed"
    TASK_FINISHED = "task.finished"
    TASK_FAILED = "task.failed"
    TASK_ABORTED = "task.aborted"
    SLACK_FUNDED = "sched.slack_funded"
    # transactions and what-if gates
    TXN_PREPARED = "txn.prepared"
    TXN_COMMITTED = "txn.committed"
    TXN_ABORTED = "txn.aborted"
    TXN_RECOVERED = "txn.recovered"
    WHATIF_ALLOWED = "whatif.allowed"
    WHATIF_REFUSED = "whatif.refused"
    # caches
    CACHE_HIT = "cache.hit"
    CACHE_MISS = "cache.miss"
    CACHE_ADMIT = "cache.admit"
    CACHE_EVICT = "cache.evict"
    CACHE_GRAFT = "cache.graft"
    CHECKPOINT_SAVED = "cache.checkpoint_saved"
    CHECKPOINT_RESTORED = "cache.checkpoint_restored"
    # simulation
    SIM_STEP = "sim.step"
    CELL_REFINED = "sim.refined"
    CELL_COARSENED = "sim.coarsened"
    INVARIANT_VIOLATED = "sim.invariant_violated"
    # bandit
    RBF_GROWN = "rbf.grown"
    RBF_PRUNED = "rbf.pruned"
    RBF_GATED = "rbf.gated"
    BANDIT_ROUND = "bandit.round"
    # workflow controls
    WORKFLOW_PAUSED = "workflow.paused"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_PREEMPTED = "workflow.preempted"
    WORKFLOW_ABORTED = "workflow.aborted"
    # runtime
    RUNTIME_STARTED = "runtime.started"
    RUNTIME_STOPPED = "runtime.stopped"
    LOG = "runtime.log"


class Event(BaseModel):
    """One thing that happened. Subclasses add typed fields; ``data`` holds the rest.

    ``seq`` is assigned by the bus on publish (monotonic per bus); ``ts`` is wall-clock
    seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: EventType
    ts: float = Field(default_factory=time.time)
    seq: int = 0
    workflow_id: str | None = None
    source: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def area(self) -> str:
        """The part of ``type`` before the dot, e.g. ``"budget"``."""
        return self.type.value.split(".", 1)[0]


Handler = Callable[[Event], None]


class Subscription:
    """A handle returned by :meth:`EventBus.subscribe`; also a context manager."""

    def __init__(self, bus: EventBus, handler: Handler, types: frozenset[str] | None) -> None:
        self._bus = bus
        self.handler = handler
        self.types = types
        self.active = True

    def matches(self, event: Event) -> bool:
        if self.types is None:
            return True
        value = event.type.value
        return value in self.types or value.split(".", 1)[0] in self.types

    def unsubscribe(self) -> None:
        """Stop receiving events. Idempotent."""
        self._bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


class EventBus:
    """Publish/subscribe for :class:`Event`, thread-safe, with a bounded history.

    Parameters
    ----------
    history:
        How many recent events to keep for late subscribers (``history()``).
    """

    def __init__(self, history: int = 2048) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[Subscription, ...] = ()
        self._seq = itertools.count(1)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)

    def subscribe(
        self,
        handler: Handler,
        types: Iterable[EventType | str] | EventType | str | None = None,
    ) -> Subscription:
        """Call ``handler(event)`` for every event whose type (or area) is in ``types``.

        ``types`` may name full types (``EventType.BUDGET_CHARGED``, ``"budget.charged"``) or
        areas (``"budget"``); ``None`` means everything.
        """
        if isinstance(types, (EventType, str)):
            types = [types]
        wanted = (
            None
            if types is None
            else frozenset(t.value if isinstance(t, EventType) else str(t) for t in types)
        )
        sub = Subscription(self, handler, wanted)
        with self._lock:
            self._subs = (*self._subs, sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            sub.active = False
            self._subs = tuple(s for s in self._subs if s is not sub)

    def publish(self, event: Event) -> Event:
        """Stamp ``event`` with a sequence number, record it and deliver it. Returns it."""
        with self._lock:
            stamped = event.model_copy(update={"seq": next(self._seq)})
            self._history.append(stamped)
            subs = self._subs
        for sub in subs:
            if sub.active and sub.matches(stamped):
                try:
                    sub.handler(stamped)
                except Exception:  # a broken subscriber must never break the publisher
                    logger.exception("event subscriber %r failed", sub.handler)
        return stamped

    def emit(
        self,
        type: EventType,
        /,
        workflow_id: str | None = None,
        source: str | None = None,
        **data: Any,
    ) -> Event:
        """Publish a plain :class:`Event` with ``data``; shorthand for untyped payloads."""
        return self.publish(Event(type=type, workflow_id=workflow_id, source=source, data=data))

    def history(self, types: Iterable[EventType | str] | None = None) -> list[Event]:
        """Recent events, oldest first, optionally filtered like :meth:`subscribe`."""
        with self._lock:
            events = list(self._history)
        if types is None:
            return events
        probe = Subscription(
            self,
            lambda e: None,
            frozenset(t.value if isinstance(t, EventType) else str(t) for t in types),
        )
        return [e for e in events if probe.matches(e)]

    def listen(
        self,
        types: Iterable[EventType | str] | None = None,
        maxsize: int = 10_000,
    ) -> _Listener:
        """A queue-backed subscription for another thread: iterate it, or call ``get()``."""
        return _Listener(self, types, maxsize)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)


class _Listener:
    """Events buffered in a queue; drops the oldest when full rather than block a publisher."""

    def __init__(self, bus: EventBus, types: Iterable[EventType | str] | None, maxsize: int):
        self._queue: queue.Queue[Event] = queue.Queue(maxsize)
        self.dropped = 0
        self._sub = bus.subscribe(self._put, types)

    def _put(self, event: Event) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float | None = None) -> Event:
        """The next event; raises ``queue.Empty`` after ``timeout`` seconds."""
        return self._queue.get(timeout=timeout)

    def drain(self) -> list[Event]:
        """Every buffered event, without waiting."""
        out: list[Event] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def __iter__(self) -> Iterator[Event]:
        while self._sub.active:
            yield self._queue.get()

    def close(self) -> None:
        self._sub.unsubscribe()

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
