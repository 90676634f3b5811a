"""What the dashboards show, folded from events: plain state objects, no widgets, no I/O.

Every event carries its type's payload model (``coreason_runtime.events``), so a state object
narrows ``event.data`` with ``isinstance`` and reads fields; events it does not show are
skipped.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from coreason_runtime import Event, EventType
from coreason_runtime.budget import Ledger
from coreason_runtime.events import (
    BudgetCharged,
    BudgetExceeded,
    BudgetSet,
    CacheAdmitted,
    CacheEvicted,
    CacheLookupHit,
    CacheLookupMiss,
    CheckpointRestored,
    CriticalPath,
    DagSubmitted,
    DecodeFinished,
    DecodeInjected,
    DecodePaused,
    DecodeResumed,
    DecodeStarted,
    EventPayload,
    KVFault,
    KVMiss,
    KVMoved,
    KVPredicted,
    KVRead,
    PrefixReused,
    RequestContinued,
    RequestSuspended,
    SpanRepaired,
    StepDeclared,
    StepForced,
    TaskAborted,
    TaskFailed,
    TaskFinished,
    TaskPreempted,
    TaskResumed,
    TaskStarted,
    ThunkForced,
    TokensBatch,
    WorkerStatus,
    WorkflowControlChanged,
)

__all__ = [
    "BudgetState",
    "CacheState",
    "DagState",
    "DecodeState",
    "KVTiersState",
    "WorkerState",
    "WorkflowState",
]


# --- workflow controls ---------------------------------------------------------------------


class WorkflowState:
    """Each workflow's control state (running, paused, preempted, aborted), from the
    ``workflow.*`` events: whoever paused it (a magic, a button, the side panel, a script);
    ``suspended`` while a request of it waits on a cluster for its ceiling to be raised."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            if ev.workflow_id is None:
                continue
            if isinstance(ev.data, WorkflowControlChanged):
                self.states[ev.workflow_id] = ev.data.state
            elif isinstance(ev.data, RequestSuspended):
                self.states[ev.workflow_id] = "suspended"
            elif isinstance(ev.data, RequestContinued):
                self.states[ev.workflow_id] = "running"

    def state(self, workflow_id: str) -> str:
        """The last state announced for ``workflow_id`` (``running`` if none was)."""
        return self.states.get(workflow_id, "running")


class WorkerState:
    """The workers of a cluster (``scale.worker`` events, relayed from the workers): each
    one's last status (joined, alive, left), requests running and completed, C consumed."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerStatus] = {}

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            if isinstance(ev.data, WorkerStatus):
                self.workers[ev.data.worker] = ev.data

    def summary(self) -> str:
        """One line: ``w1 2 running, 5 done; w2 left`` (empty without workers)."""
        parts = [
            f"{name} left"
            if w.state == "left"
            else f"{name} {w.running} running, {w.completed} done"
            for name, w in sorted(self.workers.items())
        ]
        return "; ".join(parts)


# --- budgets -------------------------------------------------------------------------------


@dataclass
class FlowBudget:
    workflow_id: str
    ceiling: float | None = None
    spent: float = 0.0
    reserved: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    by_tier: dict[str, float] = field(default_factory=dict)
    burn: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=500)
    )
    exceeded: int = 0


class BudgetState:
    """Per workflow: Ω, C spent and reserved, tokens in/out, C per tier, and C over time."""

    def __init__(self, max_points: int = 500) -> None:
        self.max_points = max_points
        self.flows: dict[str, FlowBudget] = {}

    def flow(self, workflow_id: str) -> FlowBudget:
        fb = self.flows.get(workflow_id)
        if fb is None:
            fb = self.flows[workflow_id] = FlowBudget(
                workflow_id, burn=collections.deque(maxlen=self.max_points)
            )
        return fb

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            if ev.workflow_id is None or ev.area not in ("budget", "request", "attempt"):
                continue
            fb = self.flow(ev.workflow_id)  # a workflow shows up with its first request
            p = ev.data
            if isinstance(p, (BudgetSet, BudgetCharged)):
                fb.ceiling = p.ceiling
                fb.spent = p.spent
                fb.burn.append((ev.ts, p.spent))
            elif isinstance(p, BudgetExceeded):
                fb.exceeded += 1

    def refresh(self, ledgers: Iterable[Ledger]) -> None:
        """Take the ledgers' figures as the truth (events may have been dropped)."""
        for led in ledgers:
            fb = self.flow(led.workflow_id)
            fb.ceiling = led.ceiling
            if not fb.burn or fb.burn[-1][1] != led.spent:
                fb.burn.append((time.time(), float(led.spent)))
            fb.spent = float(led.spent)
            fb.reserved = float(led.reserved)
            fb.tokens_in = led.tokens_in
            fb.tokens_out = led.tokens_out
            fb.by_tier = dict(led.by_tier)


# --- the task DAG --------------------------------------------------------------------------

TASK_STATES: dict[EventType, str] = {
    EventType.TASK_STARTED: "running",
    EventType.TASK_FINISHED: "done",
    EventType.TASK_FAILED: "failed",
    EventType.TASK_PREEMPTED: "preempted",
    EventType.TASK_RESUMED: "running",
    EventType.TASK_ABORTED: "aborted",
    EventType.STEP_DECLARED: "pending",
    EventType.STEP_FORCED: "done",
}
_TASK_PAYLOADS = (TaskStarted, TaskFinished, TaskFailed, TaskPreempted, TaskResumed, TaskAborted)


@dataclass
class Node:
    name: str
    state: str = "pending"
    deps: list[str] = field(default_factory=list)
    started: float | None = None
    duration: float | None = None
    workflow_id: str | None = None


def _node_name(p: EventPayload) -> str | None:
    """The DAG node an event is about: a scheduler task or a notebook step."""
    if isinstance(p, _TASK_PAYLOADS):
        return p.task
    if isinstance(p, (StepDeclared, StepForced)):
        return p.name
    return None


class DagState:
    """Nodes with their state and dependencies, plus the critical path (given or computed)."""

    def __init__(self, max_nodes: int = 200) -> None:
        self.max_nodes = max_nodes
        self.nodes: dict[str, Node] = {}
        self.given_critical: list[str] | None = None
        self.ignored = 0

    def node(self, name: str) -> Node | None:
        if name not in self.nodes and len(self.nodes) >= self.max_nodes:
            self.ignored += 1
            return None
        return self.nodes.setdefault(name, Node(name))

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            p = ev.data
            if isinstance(p, DagSubmitted):
                self._submit(p)
            elif isinstance(p, CriticalPath):
                self.given_critical = list(p.path)
            else:
                name = _node_name(p)
                n = self.node(name) if name is not None else None
                if n is not None:
                    self._apply_to(n, ev)

    def _apply_to(self, n: Node, ev: Event) -> None:
        p = ev.data
        n.workflow_id = n.workflow_id or ev.workflow_id
        if isinstance(p, StepDeclared):
            n.deps = list(p.deps)
            if n.state != "pending":  # declared again after it ran: keep what it did
                return
        n.state = TASK_STATES[ev.type]
        if isinstance(p, TaskStarted) and n.started is None:
            n.started = ev.ts
        if isinstance(p, StepForced):
            n.duration = p.duration_s
        elif isinstance(p, TaskFinished):
            n.duration = p.run_s

    def _submit(self, p: DagSubmitted) -> None:
        # the scheduler's modules load only once a DAG is shown
        from coreason_runtime.sched import SubgoalDAG

        for task in SubgoalDAG.model_validate(p.spec).tasks:
            n = self.node(task.id)
            if n is not None:
                n.deps = list(task.deps)

    def critical_path(self) -> list[str]:
        """The longest chain by duration (unknown durations count 1); the given one if any."""
        if self.given_critical:
            return [p for p in self.given_critical if p in self.nodes]
        best: dict[str, tuple[float, list[str]]] = {}

        def longest(name: str, seen: frozenset[str]) -> tuple[float, list[str]]:
            if name in best:
                return best[name]
            n = self.nodes[name]
            own = n.duration if n.duration is not None else 1.0
            options = [
                longest(dep, seen | {name})
                for dep in n.deps
                if dep in self.nodes and dep not in seen
            ]
            length, path = max(options, default=(0.0, []), key=lambda o: o[0])
            best[name] = (length + own, [*path, name])
            return best[name]

        if not self.nodes:
            return []
        return max((longest(n, frozenset()) for n in self.nodes), key=lambda o: o[0])[1]

    def layers(self) -> dict[str, int]:
        """Depth of each node (0 for roots), for a left-to-right layout."""
        depth: dict[str, int] = {}

        def walk(name: str, seen: frozenset[str]) -> int:
            if name in depth:
                return depth[name]
            deps = [x for x in self.nodes[name].deps if x in self.nodes and x not in seen]
            depth[name] = 1 + max((walk(x, seen | {name}) for x in deps), default=-1)
            return depth[name]

        for name in self.nodes:
            walk(name, frozenset())
        return depth


# --- caches --------------------------------------------------------------------------------


def _cache_name(p: EventPayload) -> str | None:
    """Which cache a lookup went to: the subgoal cache by kind, the KV prefix, a proof chain."""
    if isinstance(p, (CacheLookupHit, CacheLookupMiss)):
        return p.kind
    if isinstance(p, PrefixReused):
        return "prefix"
    if isinstance(p, CheckpointRestored):
        return "checkpoint"
    return None


@dataclass
class KVTiersState:
    """The KV block store, from the ``kv.*`` events: bytes per tier (GPU, RAM, disk) after
    the latest one, block reads served from a fast tier (hits) or from disk (misses), the
    decoder's total wait on misses, faults detected, and how the predictor's prefetches
    fared (blocks in RAM in time, late, never read)."""

    tiers: dict[str, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    absent: int = 0
    wait_ms: float = 0.0
    faults: int = 0
    predicted: list[int] = field(default_factory=lambda: [0, 0, 0])

    @property
    def ratio(self) -> float:
        total = self.hits + self.misses + self.absent
        return self.hits / total if total else 0.0

    def apply(self, p: EventPayload) -> bool:
        """Fold one payload in; False if it is not a ``kv.*`` one."""
        if not isinstance(p, (KVRead, KVMiss, KVMoved, KVFault, KVPredicted)):
            return False
        self.tiers = dict(p.tiers)
        if isinstance(p, KVPredicted):
            got = (p.hits, p.late, p.wasted)
            self.predicted = [a + b for a, b in zip(self.predicted, got, strict=True)]
        elif isinstance(p, KVRead):
            self.hits += p.hits
            self.misses += p.misses
            self.absent += p.absent
            self.wait_ms += p.wait_ms
        elif isinstance(p, KVFault):
            self.faults += p.blocks
        return True


class CacheState:
    """Hits and misses (total and per cache), the hit ratio over time, and the KV tiers."""

    def __init__(self, max_points: int = 500) -> None:
        self.kv = KVTiersState()
        self.hits = 0
        self.misses = 0
        self.admits = 0
        self.evicts = 0
        self.by_cache: dict[str, list[int]] = {}
        self.series: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=max_points
        )

    @property
    def ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def apply(self, events: Iterable[Event]) -> None:
        last_ts = None
        for ev in events:
            p = ev.data
            name = _cache_name(p)
            if self.kv.apply(p):
                continue
            if name is not None:
                hit = not isinstance(p, CacheLookupMiss)
                self.hits += hit
                self.misses += not hit
                self.by_cache.setdefault(name, [0, 0])[0 if hit else 1] += 1
            elif isinstance(p, CacheAdmitted):
                self.admits += p.admitted
            elif isinstance(p, CacheEvicted):
                self.evicts += p.count
            else:
                continue
            last_ts = ev.ts
        if last_ts is not None:
            self.series.append((last_ts, self.hits, self.misses))


# --- the decode stream ---------------------------------------------------------------------

_DECODE_STATES = {"running": "decoding", "paused": "paused", "preempted": "preempted"}


class DecodeState:
    """The decoded text as spans: plain, repaired, injected, forced thunk; capped in length.

    ``tokens`` counts every tier's streamed output tokens (local and remote alike).
    """

    def __init__(self, max_chars: int = 4000) -> None:
        self.max_chars = max_chars
        self.spans: collections.deque[tuple[str, str]] = collections.deque()
        self.chars = 0
        self.tokens = 0
        self.repairs = 0
        self.forced = 0
        self.state = "idle"
        self.precision = ""  # of the model the last session decoded on

    def _add(self, text: str, kind: str) -> None:
        if not text:
            return
        if self.spans and self.spans[-1][1] == kind == "text":
            self.spans[-1] = (self.spans[-1][0] + text, kind)
        else:
            self.spans.append((text, kind))
        self.chars += len(text)
        while self.chars > self.max_chars and self.spans:
            head, head_kind = self.spans.popleft()
            excess = self.chars - self.max_chars
            if len(head) > excess:
                self.spans.appendleft((head[excess:], head_kind))
                self.chars -= excess
            else:
                self.chars -= len(head)

    def _mark(self, old: str, new: str) -> None:
        """Show a repair where it happened: the old span struck through, the new one marked;
        appended when the old span is no longer in the (capped) stream."""
        for i in range(len(self.spans) - 1, -1, -1):
            text, kind = self.spans[i]
            at = text.rfind(old) if kind == "text" and old else -1
            if at < 0:
                continue
            parts = [(text[:at], "text"), (old, "replaced"), (new, "repaired")]
            parts.append((text[at + len(old) :], "text"))
            del self.spans[i]
            for offset, part in enumerate(p for p in parts if p[0]):
                self.spans.insert(i + offset, part)
            self.chars += len(new)
            return
        self._add(new, "repaired")

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            p = ev.data
            if isinstance(p, TokensBatch):
                self.tokens += p.tokens_out
                self._add(p.delta, "text")
            elif isinstance(p, SpanRepaired):
                if p.new_text != p.old_text:  # a rejected repair changed nothing
                    self.repairs += 1
                    self._mark(p.old_text, p.new_text)
            elif isinstance(p, DecodeInjected):
                self._add(f"⟦+{p.n_tokens} tokens⟧", "injected")
            elif isinstance(p, ThunkForced):
                self.forced += 1
                self._add(f"⟦{p.name}={p.expansion}⟧" if p.expansion else f"⟦{p.name}⟧", "thunk")
            else:
                self._follow(p)

    def _follow(self, p: EventPayload) -> None:
        """The stream's state: a session's lifecycle, or its workflow's controls."""
        if isinstance(p, DecodeStarted):
            self.precision = p.precision
        if isinstance(p, (DecodeStarted, DecodeResumed)):
            self.state = "decoding"
        elif isinstance(p, DecodePaused):
            self.state = "paused"
        elif isinstance(p, DecodeFinished):
            self.state = "finished"
        elif isinstance(p, WorkflowControlChanged):
            self.state = _DECODE_STATES.get(p.state, p.state)
