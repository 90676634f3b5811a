"""Running declared steps as a DAG on the runtime thread, and checking invariants.

``coreason_runtime.sched`` (the critical-path scheduler) takes this over when the runtime
provides it; until then steps run one at a time in dependency order, each announced with
``task.*`` events, and a pause or abort takes effect between steps (and inside any request a
step makes).
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coreason_runtime import EventType

from coreason_lab._control import Controls, WorkflowAborted
from coreason_lab._steps import (
    Invariant,
    InvariantResult,
    InvariantViolation,
    RunReport,
    Thunk,
    dependency_order,
)

__all__ = ["CheckReport", "StepRunner"]


@dataclass
class CheckReport:
    """The result of evaluating invariants: per invariant ``ok`` (None: not yet decidable)."""

    results: list[InvariantResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok is not False for r in self.results)

    def _repr_html_(self) -> str:
        mark = {True: "✓", False: "✗", None: "…"}
        rows = "".join(f"<tr><td>{mark[r.ok]}</td><td>{html.escape(r.name)}</td>"
                       f"<td>{html.escape(r.detail)}</td></tr>" for r in self.results)
        return f"<table class='coreason-check'>{rows}</table>"

    def __repr__(self) -> str:
        return "CheckReport(" + ", ".join(f"{r.name}={r.ok}" for r in self.results) + ")"


class StepRunner:
    """Forces thunks in dependency order and evaluates invariants for one runtime."""

    def __init__(self, runtime: Any, controls: Controls, thunks: Mapping[str, Thunk],
                 invariants: Mapping[str, Invariant], namespace: Mapping[str, Any]) -> None:
        self.runtime = runtime
        self.controls = controls
        self.thunks = thunks
        self.invariants = invariants
        self.ns = namespace

    def order(self, targets: list[str]) -> list[str]:
        return dependency_order(targets, {n: t.deps for n, t in self.thunks.items()})

    def run(self, order: list[str], workflow_id: str) -> RunReport:
        """Force ``order`` one step at a time; raises the first step's error after marking the
        rest aborted. Runs on the runtime thread."""
        bus = self.runtime.bus
        report = RunReport(workflow_id, states={n: "pending" for n in order})
        bus.emit(EventType.DAG_SUBMITTED, workflow_id=workflow_id, source="coreason_lab",
                 nodes=[{"id": n, "deps": [d for d in self.thunks[n].deps if d in order]}
                        for n in order])
        for i, name in enumerate(order):
            thunk = self.thunks[name]
            try:
                self.controls.checkpoint(workflow_id)
            except WorkflowAborted:
                self._abort_rest(order[i:], workflow_id, report, "aborted by operator")
                raise
            if thunk.forced:
                report.states[name] = "done"
                report.durations[name] = thunk.duration_s or 0.0
                bus.emit(EventType.TASK_FINISHED, workflow_id=workflow_id,
                         source="coreason_lab", task=name, cached=True, duration_s=0.0)
                continue
            report.states[name] = "running"
            bus.emit(EventType.TASK_STARTED, workflow_id=workflow_id, source="coreason_lab",
                     task=name, deps=thunk.deps)
            t0 = time.perf_counter()
            try:
                thunk.force()
            except BaseException as e:
                report.states[name] = "aborted" if isinstance(e, WorkflowAborted) else "failed"
                kind = EventType.TASK_ABORTED if isinstance(e, WorkflowAborted) \
                    else EventType.TASK_FAILED
                bus.emit(kind, workflow_id=workflow_id, source="coreason_lab", task=name,
                         error=f"{type(e).__name__}: {e}")
                self._abort_rest(order[i + 1:], workflow_id, report, f"{name} failed")
                raise
            report.durations[name] = time.perf_counter() - t0
            report.states[name] = "done"
            bus.emit(EventType.TASK_FINISHED, workflow_id=workflow_id, source="coreason_lab",
                     task=name, duration_s=report.durations[name])
        report.critical_path = self._critical_path(order, report.durations)
        bus.emit(EventType.CRITICAL_PATH, workflow_id=workflow_id, source="coreason_lab",
                 path=report.critical_path,
                 length_s=sum(report.durations.get(n, 0.0) for n in report.critical_path))
        return report

    def _abort_rest(self, names: list[str], workflow_id: str, report: RunReport,
                    reason: str) -> None:
        for name in names:
            report.states[name] = "aborted"
            self.runtime.bus.emit(EventType.TASK_ABORTED, workflow_id=workflow_id,
                                  source="coreason_lab", task=name, reason=reason)

    def _critical_path(self, order: list[str], durations: dict[str, float]) -> list[str]:
        best: dict[str, tuple[float, list[str]]] = {}
        for name in order:  # dependency order: every dep is already scored
            deps = [best[d] for d in self.thunks[name].deps if d in best]
            length, path = max(deps, default=(0.0, []), key=lambda b: b[0])
            best[name] = (length + durations.get(name, 0.0), [*path, name])
        return max(best.values(), key=lambda b: b[0], default=(0.0, []))[1]

    def check(self, names: list[str], workflow_id: str) -> CheckReport:
        """Evaluate invariants; violations are published and raised.

        Raises
        ------
        InvariantViolation
            If any invariant is false (undecidable ones, e.g. on unforced steps, are not).
        """
        report = CheckReport([self.invariants[n].check(self.ns) for n in names])
        failed = [r for r in report.results if r.ok is False]
        for r in failed:
            self.runtime.bus.emit(EventType.INVARIANT_VIOLATED, workflow_id=workflow_id,
                                  source="coreason_lab", invariant=r.name, detail=r.detail)
        if failed:
            detail = "; ".join(f"{r.name}: {r.detail}" for r in failed)
            msg = f"{len(failed)} invariant(s) violated: {detail}"
            raise InvariantViolation(msg, results=report.results, workflow_id=workflow_id)
        return report
