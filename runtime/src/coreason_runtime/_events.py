"""Typed runtime events and the in-process event bus every mechanism publishes on.

Every mechanism publishes a pydantic :class:`Event` whose ``type`` is an :class:`EventType`
and whose ``data`` is that type's payload model (:data:`PAYLOADS`), so one event type carries
the same fields wherever it is emitted and readers use fields (narrowing with ``isinstance``).
Subscribers are called synchronously on the publisher's thread, so they must be cheap:
dashboards put a throttle between the bus and the screen, remote listeners put a queue. A
subscriber that raises is logged and never breaks the publisher. Nothing polls.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from coreason_runtime import _payloads as P
from coreason_runtime._exceptions import EventPayloadError
from coreason_runtime._payloads import EventPayload

__all__ = ["PAYLOADS", "Event", "EventBus", "EventType", "Subscription"]

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
    REQUEST_VERIFIED = "request.verified"
    FIELD_REPAIRED = "request.field_repaired"
    REQUEST_SUSPENDED = "request.suspended"
    REQUEST_CONTINUED = "request.continued"
    SCHEMA_COMPILED = "schema.compiled"
    PREFIX_REUSED = "cache.prefix_reused"
    # routing: the policy's plan per request, tier health
    ROUTE_DECIDED = "route.decided"
    TIER_HEALTH = "route.tier_health"
    # budget cage
    BUDGET_SET = "budget.set"
    BUDGET_RESERVED = "budget.reserved"
    BUDGET_CHARGED = "budget.charged"
    BUDGET_EXCEEDED = "budget.exceeded"
    BUDGET_RESET = "budget.reset"
    # decode engine
    DECODE_STARTED = "decode.started"
    DECODE_PAUSED = "decode.paused"
    DECODE_RESUMED = "decode.resumed"
    DECODE_INJECTED = "decode.injected"
    DECODE_FINISHED = "decode.finished"
    DECODE_CHECKPOINTED = "decode.checkpointed"
    DECODE_RESTORED = "decode.restored"
    SPAN_REPAIRED = "decode.span_repaired"
    THUNK_DECLARED = "thunk.declared"
    THUNK_FORCED = "thunk.forced"
    VERIFIER_FAILED = "verifier.failed"
    # scheduling
    DAG_SUBMITTED = "sched.dag_submitted"
    SCHEDULE_DECIDED = "sched.decided"
    ESTIMATE_UPDATED = "sched.estimate_updated"
    CRITICAL_PATH = "sched.critical_path"
    TASK_STARTED = "task.started"
    TASK_PREEMPTED = "task.preempted"
    TASK_RESUMED = "task.resumed"
    TASK_FINISHED = "task.finished"
    TASK_FAILED = "task.failed"
    TASK_ABORTED = "task.aborted"
    SLACK_FUNDED = "sched.slack_funded"
    # notebook steps (coreason_lab's lazy cells and their invariants)
    STEP_DECLARED = "step.declared"
    STEP_FORCED = "step.forced"
    STEP_INVARIANT_VIOLATED = "step.invariant_violated"
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
    # KV block tiers (GPU, RAM, disk)
    KV_READ = "kv.read"
    KV_MISS = "kv.miss"
    KV_PROMOTED = "kv.promoted"
    KV_DEMOTED = "kv.demoted"
    KV_FAULT = "kv.fault"
    KV_PREDICTED = "kv.predicted"
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
    # workflow controls (pause / resume / preempt / abort from any thread)
    WORKFLOW_PAUSED = "workflow.paused"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_PREEMPTED = "workflow.preempted"
    WORKFLOW_ABORTED = "workflow.aborted"
    # workers of a cluster (Temporal + Redis)
    WORKER_STATUS = "scale.worker"
    # runtime
    RUNTIME_STARTED = "runtime.started"
    RUNTIME_STOPPED = "runtime.stopped"
    LOG = "runtime.log"


#: The payload class of every event type (a test checks that none is missing).
PAYLOADS: Mapping[EventType, type[EventPayload]] = MappingProxyType(
    {
        EventType.REQUEST_STARTED: P.RequestStarted,
        EventType.REQUEST_FINISHED: P.RequestFinished,
        EventType.REQUEST_FAILED: P.RequestFailed,
        EventType.ATTEMPT_STARTED: P.AttemptStarted,
        EventType.ATTEMPT_FINISHED: P.AttemptFinished,
        EventType.ATTEMPT_FAILED: P.AttemptFailed,
        EventType.TOKENS: P.TokensBatch,
        EventType.ESCALATED: P.Escalated,
        EventType.YIELDED: P.Yielded,
        EventType.HUMAN_ANSWERED: P.HumanAnswered,
        EventType.REQUEST_VERIFIED: P.RequestVerified,
        EventType.FIELD_REPAIRED: P.FieldRepaired,
        EventType.REQUEST_SUSPENDED: P.RequestSuspended,
        EventType.REQUEST_CONTINUED: P.RequestContinued,
        EventType.SCHEMA_COMPILED: P.SchemaCompiled,
        EventType.PREFIX_REUSED: P.PrefixReused,
        EventType.ROUTE_DECIDED: P.RouteDecided,
        EventType.TIER_HEALTH: P.TierHealthChanged,
        EventType.BUDGET_SET: P.BudgetSet,
        EventType.BUDGET_RESERVED: P.BudgetReserved,
        EventType.BUDGET_CHARGED: P.BudgetCharged,
        EventType.BUDGET_EXCEEDED: P.BudgetExceeded,
        EventType.BUDGET_RESET: P.BudgetReset,
        EventType.DECODE_STARTED: P.DecodeStarted,
        EventType.DECODE_PAUSED: P.DecodePaused,
        EventType.DECODE_RESUMED: P.DecodeResumed,
        EventType.DECODE_INJECTED: P.DecodeInjected,
        EventType.DECODE_FINISHED: P.DecodeFinished,
        EventType.DECODE_CHECKPOINTED: P.DecodeCheckpointed,
        EventType.DECODE_RESTORED: P.DecodeRestored,
        EventType.SPAN_REPAIRED: P.SpanRepaired,
        EventType.THUNK_DECLARED: P.ThunkDeclared,
        EventType.THUNK_FORCED: P.ThunkForced,
        EventType.VERIFIER_FAILED: P.VerifierFailed,
        EventType.DAG_SUBMITTED: P.DagSubmitted,
        EventType.SCHEDULE_DECIDED: P.ScheduleDecided,
        EventType.ESTIMATE_UPDATED: P.EstimateUpdated,
        EventType.CRITICAL_PATH: P.CriticalPath,
        EventType.TASK_STARTED: P.TaskStarted,
        EventType.TASK_PREEMPTED: P.TaskPreempted,
        EventType.TASK_RESUMED: P.TaskResumed,
        EventType.TASK_FINISHED: P.TaskFinished,
        EventType.TASK_FAILED: P.TaskFailed,
        EventType.TASK_ABORTED: P.TaskAborted,
        EventType.SLACK_FUNDED: P.SlackFunded,
        EventType.STEP_DECLARED: P.StepDeclared,
        EventType.STEP_FORCED: P.StepForced,
        EventType.STEP_INVARIANT_VIOLATED: P.StepInvariantViolated,
        EventType.TXN_PREPARED: P.TxnPrepared,
        EventType.TXN_COMMITTED: P.TxnCommitted,
        EventType.TXN_ABORTED: P.TxnAborted,
        EventType.TXN_RECOVERED: P.TxnRecovered,
        EventType.WHATIF_ALLOWED: P.WhatIfDecided,
        EventType.WHATIF_REFUSED: P.WhatIfDecided,
        EventType.CACHE_HIT: P.CacheLookupHit,
        EventType.CACHE_MISS: P.CacheLookupMiss,
        EventType.CACHE_ADMIT: P.CacheAdmitted,
        EventType.CACHE_EVICT: P.CacheEvicted,
        EventType.CACHE_GRAFT: P.CacheGrafted,
        EventType.CHECKPOINT_SAVED: P.CheckpointSaved,
        EventType.CHECKPOINT_RESTORED: P.CheckpointRestored,
        EventType.KV_READ: P.KVRead,
        EventType.KV_MISS: P.KVMiss,
        EventType.KV_PROMOTED: P.KVMoved,
        EventType.KV_DEMOTED: P.KVMoved,
        EventType.KV_FAULT: P.KVFault,
        EventType.KV_PREDICTED: P.KVPredicted,
        EventType.SIM_STEP: P.SimStep,
        EventType.CELL_REFINED: P.CellRefined,
        EventType.CELL_COARSENED: P.CellCoarsened,
        EventType.INVARIANT_VIOLATED: P.InvariantViolated,
        EventType.RBF_GROWN: P.RbfGrown,
        EventType.RBF_PRUNED: P.RbfPruned,
        EventType.RBF_GATED: P.RbfGated,
        EventType.BANDIT_ROUND: P.BanditRound,
        EventType.WORKFLOW_PAUSED: P.WorkflowControlChanged,
        EventType.WORKFLOW_RESUMED: P.WorkflowControlChanged,
        EventType.WORKFLOW_PREEMPTED: P.WorkflowControlChanged,
        EventType.WORKFLOW_ABORTED: P.WorkflowControlChanged,
        EventType.WORKER_STATUS: P.WorkerStatus,
        EventType.RUNTIME_STARTED: P.RuntimeStarted,
        EventType.RUNTIME_STOPPED: P.RuntimeStopped,
        EventType.LOG: P.Log,
    }
)


def build_payload(type: EventType, fields: Mapping[str, Any]) -> EventPayload:
    """The payload of a ``type`` event with ``fields``.

    Raises
    ------
    EventPayloadError
        A field the payload does not have, a required one missing, or a value of the wrong
        type: the emit site does not match the payload.
    """
    cls = PAYLOADS[type]
    try:
        return cls(**fields)
    except ValidationError as e:
        unknown = sorted(set(fields) - set(cls.model_fields))
        missing = sorted(
            n for n, f in cls.model_fields.items() if f.is_required() and n not in fields
        )
        problems = [f"unknown field(s) {unknown}"] if unknown else []
        problems += [f"missing field(s) {missing}"] if missing else []
        detail = "; ".join(problems) or str(e)
        msg = (
            f"{type.value} event ({cls.__name__}): {detail}; its fields are "
            f"{list(cls.model_fields)}"
        )
        raise EventPayloadError(msg) from e


class Event(BaseModel):
    """One thing that happened: its ``type``, and ``data``, that type's payload model.

    ``seq`` is assigned by the bus on publish (monotonic per bus); ``ts`` is wall-clock
    seconds. ``data`` may be given as the payload or as a dict of its fields (a dumped event
    from a log or a comm validates back into the right payload class); a payload of another
    type's class is refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: EventType
    ts: float = Field(default_factory=time.time)
    seq: int = 0
    workflow_id: str | None = None
    source: str | None = None
    data: SerializeAsAny[EventPayload]

    @model_validator(mode="before")
    @classmethod
    def _payload_of_its_type(cls, value: Any) -> Any:
        if not isinstance(value, Mapping) or "type" not in value:
            return value  # field validation reports what is missing
        try:
            payload_cls = PAYLOADS[EventType(value["type"])]
        except ValueError:
            return value
        data = value.get("data", {})
        if isinstance(data, EventPayload):
            if type(data) is not payload_cls:
                msg = (
                    f"a {value['type']} event carries {payload_cls.__name__}, "
                    f"not {type(data).__name__}"
                )
                raise ValueError(msg)
            return value
        return {**value, "data": payload_cls.model_validate(data)}

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
        **fields: Any,
    ) -> Event:
        """Publish a ``type`` event whose payload (``PAYLOADS[type]``) is built from ``fields``.

        Raises
        ------
        EventPayloadError
            ``fields`` do not match the payload (unknown, missing or mistyped field).
        """
        payload = build_payload(type, fields)
        return self.publish(Event(type=type, workflow_id=workflow_id, source=source, data=payload))

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
