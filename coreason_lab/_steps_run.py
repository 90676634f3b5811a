"""Running declared steps as a DAG under the runtime's scheduler, and checking invariants.

The scheduler (``coreason_runtime.sched``) publishes the DAG, every task's start, finish,
failure, preemption and abort, and the critical path, which is what the dashboard's DAG view
draws. A pause or abort reaches a step at its control checkpoints (before its body, and at
every metered token of any request it makes).
"""

from __future__ import annotations

import concurrent.futures
import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coreason_runtime import (
    Controls,
    ControlState,
    EventType,
    SchedulerError,
    Ticket,
    WorkflowAbortedError,
)

from coreason_lab._steps import (
    CellInvariant,
    CellInvariantResult,
    CellInvariantViolation,
    CellThunk,
    RunReport,
    dependency_order,
)

__all__ = ["CheckReport", "StepRunner"]


@dataclass
class CheckReport:
    """The result of evaluating invariants: per invariant ``ok`` (None: not yet decidable)."""

    results: list[CellInvariantResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok is not False for r in self.results)

    def _repr_html_(self) -> str:
        mark = {True: "✓", False: "✗", None: "…"}
        rows = "".join(
            f"<tr><td>{mark[r.ok]}</td><td>{html.escape(r.name)}</td>"
            f"<td>{html.escape(r.detail)}</td></tr>"
            for r in self.results
        )
        return f"<table class='coreason-check'>{rows}</table>"

    def __repr__(self) -> str:
        return "CheckReport(" + ", ".join(f"{r.name}={r.ok}" for r in self.results) + ")"


class _CancelOnAbort:
    """Cancels a running DAG when its workflow is aborted (pauses hold its steps instead)."""

    def __init__(self, scheduler: Any, dag_id: str) -> None:
        self._scheduler = scheduler
        self._dag_id = dag_id

    def control(self, state: ControlState) -> None:
        if state is ControlState.ABORTED:
            self._scheduler.cancel(self._dag_id, reason="aborted by operator")


class StepRunner:
    """Forces thunks in dependency order and evaluates invariants for one runtime."""

    def __init__(
        self,
        runtime: Any,
        controls: Controls,
        thunks: Mapping[str, CellThunk],
        invariants: Mapping[str, CellInvariant],
        namespace: Mapping[str, Any],
    ) -> None:
        self.runtime = runtime
        self.controls = controls
        self.thunks = thunks
        self.invariants = invariants
        self.ns = namespace
        self._runs = 0

    def order(self, targets: list[str]) -> list[str]:
        return dependency_order(targets, {n: t.deps for n, t in self.thunks.items()})

    def submit(self, order: list[str], workflow_id: str) -> concurrent.futures.Future[RunReport]:
        """Hand the steps to the runtime's critical-path scheduler as one DAG.

        Each step runs as an in-process job on its own thread (independent steps in
        parallel, up to the cores); it passes the workflow's control gate before its body, so
        pause holds it and abort stops it, and an abort also cancels the DAG.
        """
        from coreason_runtime.sched import InProcessJob, Scheduler, SubgoalDAG, TaskSpec

        sched = self.runtime.engine("scheduler", Scheduler.for_runtime)
        self._runs += 1
        dag = SubgoalDAG(
            id=f"lab-run-{id(self)}-{self._runs}",
            workflow_id=workflow_id,
            tasks=[
                TaskSpec(
                    id=name,
                    deps=[d for d in self.thunks[name].deps if d in order],
                    eta=self.thunks[name].duration_s or 1.0,
                    max_attempts=1,
                    meta={"source": "coreason_lab"},
                )
                for name in order
            ],
        )

        def action(name: str, ticket: Ticket) -> Any:
            def target(gate: Any) -> bool:
                gate.checkpoint()
                ticket.checkpoint()  # the run's ticket: paused holds, aborted raises
                self.thunks[name].force()
                return True  # a step's value may be falsy; success is "did not raise"

            return lambda spec, attempt: InProcessJob(target)

        async def run() -> RunReport:
            with (
                self.controls.scope(workflow_id) as ticket,
                ticket.track(_CancelOnAbort(sched, dag.id)),
            ):
                actions = {n: action(n, ticket) for n in order}
                result = await sched.run(dag, actions, check=False)
                aborted = ticket.aborted
            return self._report(result, order, workflow_id, aborted=aborted)

        return self.runtime.submit(run())  # type: ignore[no-any-return]

    def _report(
        self, result: Any, order: list[str], workflow_id: str, *, aborted: bool
    ) -> RunReport:
        report = RunReport(
            workflow_id,
            states={n: result.tasks[n].state for n in order},
            durations={n: result.tasks[n].run_s for n in order},
            status=result.status,
        )
        # the scheduler's path is the *remaining* one; the report shows the whole chain
        report.critical_path = self._critical_path(order, report.durations)
        if result.status == "succeeded":
            return report
        failed = [self.thunks[n] for n in order if result.tasks[n].state == "failed"]
        for thunk in failed:
            if thunk.error is not None:
                raise thunk.error  # the step's own exception, as if it ran in the cell
        if aborted or result.status == "cancelled":
            msg = f"run of workflow {workflow_id!r} was aborted: {result.error}"
            raise WorkflowAbortedError(msg, workflow_id=workflow_id)
        msg = f"run of workflow {workflow_id!r} {result.status}: {result.error}"
        raise SchedulerError(msg, workflow_id=workflow_id)

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
        CellInvariantViolation
            If any invariant is false (undecidable ones, e.g. on unforced steps, are not).
        """
        report = CheckReport([self.invariants[n].check(self.ns) for n in names])
        failed = [r for r in report.results if r.ok is False]
        for r in failed:
            self.runtime.bus.emit(
                EventType.STEP_INVARIANT_VIOLATED,
                workflow_id=workflow_id,
                source="coreason_lab",
                invariant=r.name,
                detail=r.detail,
            )
        if failed:
            detail = "; ".join(f"{r.name}: {r.detail}" for r in failed)
            msg = f"{len(failed)} invariant(s) violated: {detail}"
            raise CellInvariantViolation(msg, results=report.results, workflow_id=workflow_id)
        return report
