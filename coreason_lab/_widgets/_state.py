"""What the dashboards show, folded from events: plain state objects, no widgets, no I/O.

Payloads of other mechanisms' events are free-form dicts, so every lookup is defensive: a
field is read under the names its producers are likely to use, and an event that carries
nothing usable is counted and otherwise ignored.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coreason_runtime import Event

__all__ = ["BudgetState", "CacheState", "DagState", "DecodeState", "pick"]


def pick(data: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first present, non-None value among ``names`` in ``data``."""
    for name in names:
        value = data.get(name)
        if value is not None:
            return value
    return default


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


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
        self.dirty: set[str] = set()

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
            fb = self.flow(ev.workflow_id)
            d = ev.data
            if ev.type.value == "budget.exceeded":
                fb.exceeded += 1
            ceiling = pick(d, "ceiling", "omega")
            if ceiling is not None:
                fb.ceiling = _num(ceiling, fb.ceiling or 0.0)
            spent = pick(d, "spent", "total_spent")
            if spent is not None:
                fb.spent = _num(spent, fb.spent)
                fb.burn.append((ev.ts, fb.spent))
            self.dirty.add(ev.workflow_id)

    def refresh(self, ledgers: Iterable[Any]) -> None:
        """Take the ledgers' figures as the truth (events may have been dropped)."""
        for led in ledgers:
            fb = self.flow(led.workflow_id)
            fb.ceiling = led.ceiling
            if not fb.burn or fb.burn[-1][1] != led.spent:
                fb.burn.append((time.time(), float(led.spent)))
            fb.spent = float(led.spent)
            fb.reserved = float(getattr(led, "reserved", 0.0))
            fb.tokens_in = int(getattr(led, "tokens_in", 0))
            fb.tokens_out = int(getattr(led, "tokens_out", 0))
            fb.by_tier = dict(getattr(led, "by_tier", {}) or {})
        self.dirty.clear()


# --- the task DAG --------------------------------------------------------------------------

TASK_STATES = {
    "task.started": "running",
    "task.finished": "done",
    "task.failed": "failed",
    "task.preempted": "preempted",
    "task.resumed": "running",
    "task.aborted": "aborted",
    "thunk.declared": "pending",
    "thunk.forced": "done",
}


@dataclass
class Node:
    name: str
    state: str = "pending"
    deps: list[str] = field(default_factory=list)
    started: float | None = None
    duration: float | None = None
    workflow_id: str | None = None


def _node_name(d: dict[str, Any]) -> str | None:
    value = pick(d, "task", "task_id", "node", "name", "thunk", "id", "step")
    return None if value is None else str(value)


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
            d, kind = ev.data, ev.type.value
            if kind == "sched.dag_submitted":
                self._submit(d)
            elif kind == "sched.critical_path":
                path = pick(d, "path", "nodes", "critical_path")
                if isinstance(path, (list, tuple)):
                    self.given_critical = [str(p) for p in path]
            elif kind in TASK_STATES:
                name = _node_name(d)
                n = self.node(name) if name else None
                if n is None:
                    self.ignored += 1
                    continue
                n.workflow_id = n.workflow_id or ev.workflow_id
                deps = pick(d, "deps", "after", "depends_on")
                if isinstance(deps, (list, tuple)):
                    n.deps = [str(x) for x in deps]
                if kind == "thunk.declared" and n.state != "pending":
                    continue
                n.state = TASK_STATES[kind]
                if kind == "task.started" and n.started is None:
                    n.started = ev.ts
                dur = pick(d, "duration_s", "duration", "seconds")
                if dur is not None:
                    n.duration = _num(dur)
                elif kind in ("task.finished", "thunk.forced") and n.started is not None:
                    n.duration = ev.ts - n.started

    def _submit(self, d: dict[str, Any]) -> None:
        spec = d.get("spec")
        if isinstance(spec, dict):  # the scheduler publishes the whole SubgoalDAG
            d = {**spec, **{k: v for k, v in d.items() if k != "spec"}}
        nodes = pick(d, "nodes", "tasks", default=[])
        for item in nodes if isinstance(nodes, (list, tuple)) else []:
            if isinstance(item, dict):
                name = _node_name(item)
                n = self.node(name) if name else None
                deps = pick(item, "deps", "after", "depends_on", default=[])
                if n is not None and isinstance(deps, (list, tuple)):
                    n.deps = [str(x) for x in deps]
            elif item is not None:
                self.node(str(item))
        edges = pick(d, "edges", default=[])
        for edge in edges if isinstance(edges, (list, tuple)) else []:
            if isinstance(edge, (list, tuple)) and len(edge) == 2:
                src, dst = (str(e) for e in edge)
                self.node(src)
                n = self.node(dst)
                if n is not None and src not in n.deps:
                    n.deps.append(src)

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


class CacheState:
    """Hits and misses (total and per cache) and the hit ratio over time."""

    def __init__(self, max_points: int = 500) -> None:
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
            kind = ev.type.value
            name = str(pick(ev.data, "cache", "store", "name", "kind", default="cache"))
            counts = self.by_cache.setdefault(name, [0, 0])
            if kind in ("cache.hit", "cache.prefix_reused", "cache.checkpoint_restored"):
                self.hits += 1
                counts[0] += 1
            elif kind == "cache.miss":
                self.misses += 1
                counts[1] += 1
            elif kind == "cache.admit":
                self.admits += 1
            elif kind == "cache.evict":
                self.evicts += 1
            else:
                continue
            last_ts = ev.ts
        if last_ts is not None:
            self.series.append((last_ts, self.hits, self.misses))


# --- the decode stream ---------------------------------------------------------------------


class DecodeState:
    """The decoded text as spans: plain, repaired, injected, forced thunk; capped in length."""

    def __init__(self, max_chars: int = 4000) -> None:
        self.max_chars = max_chars
        self.spans: collections.deque[tuple[str, str]] = collections.deque()
        self.chars = 0
        self.tokens = 0
        self.repairs = 0
        self.forced = 0
        self.state = "idle"
        self._base = 0
        self._last = 0

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

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            d, kind = ev.data, ev.type.value
            if kind == "tokens.batch":
                count = pick(d, "count", "n", "n_tokens")
                if count is not None:
                    self.tokens += int(_num(count))
                elif isinstance(d.get("tokens"), int):  # running total of one request
                    total = d["tokens"]
                    self._base += self._last if total < self._last else 0
                    self._last = total
                    self.tokens = self._base + total
                text = pick(d, "text", "delta", "chunk")
                self._add(str(text) if text is not None else "", "text")
            elif kind == "decode.span_repaired":
                self.repairs += 1
                self._add(
                    str(pick(d, "new_text", "text", "new", "replacement", default="")), "repaired"
                )
            elif kind == "decode.injected":
                self._add(str(pick(d, "text", "injected", default="")), "injected")
            elif kind == "thunk.forced":
                self.forced += 1
                label = pick(d, "name", "thunk", default="thunk")
                value = pick(d, "summary", "value", "expansion", "text", default="")
                self._add(f"⟦{label}={value}⟧" if value != "" else f"⟦{label}⟧", "thunk")
            elif kind in ("decode.started", "decode.resumed"):
                self.state = "decoding"
            elif kind == "decode.paused":
                self.state = "paused"
            elif kind == "decode.finished":
                self.state = "finished"
