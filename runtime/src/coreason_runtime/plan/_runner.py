"""The Coordinator's side of planning: validate a proposed DAG, gate it, run it, learn.

A planner only suggests. :meth:`PlanRunner.run` turns its proposal into a
:class:`~coreason_runtime.sched.SubgoalDAG` on the runtime's terms: kinds it knows, its own
estimates (history, then a probe on the first sight of a kind, the planner's guess only where
neither exists), its attempt and wall-budget caps, the what-if gate on every costly subgoal
(judged on the runtime's estimate, never the plan's), verification of every value; then runs
it on the critical-path scheduler, reusable subgoals ranked up by the subgoal cache's hit
ratio, and learns ETA and p_succ from what ran.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import CoreasonError, InvalidDAGError
from coreason_runtime.plan._estimates import EstimateBook
from coreason_runtime.plan._planner import Planner, as_proposal
from coreason_runtime.plan._types import KindSpec, PlanProposal, PlanResult, Subgoal
from coreason_runtime.sched import (
    Budget,
    InProcessJob,
    PauseGate,
    Scheduler,
    SubgoalDAG,
    TaskSpec,
)
from coreason_runtime.sim._whatif import Prediction, WhatIfGate

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.cache import SubgoalCache
    from coreason_runtime.sched import Action, Job

__all__ = ["PlanRunner"]


class PlanRunner:
    """Runs planners' proposals under the runtime's gates (``rt.plans``).

    Parameters
    ----------
    bus:
        Where estimate updates, gate decisions and the scheduler's events go.
    cache:
        The subgoal cache: cacheable kinds reuse verified values through it, and its hit ratio
        ranks reusable subgoals up.
    book:
        ETA and p_succ per kind, from history.
    lam:
        What one unit of a subgoal's C is worth against a success (the gate's price).
    cores:
        Cores the scheduler may use for one plan.
    rt:
        The Coordinator, when there is one (the scheduler then runs on its loop).
    """

    def __init__(
        self,
        bus: EventBus | None = None,
        *,
        cache: SubgoalCache | None = None,
        book: EstimateBook | None = None,
        lam: float = 1e-4,
        cores: int | None = None,
        max_wall_s: float | None = None,
        rt: Coordinator | None = None,
    ) -> None:
        self.bus = bus if bus is not None else EventBus()
        self.cache = cache
        self.book = book if book is not None else EstimateBook()
        self.gate = WhatIfGate(min_ratio=1.0, bus=self.bus, source="plan.gate")
        self.lam = lam
        self.cores = cores
        self.max_wall_s = max_wall_s
        self.kinds: dict[str, KindSpec] = {}
        self._rt = rt

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> PlanRunner:
        """The runner of ``rt``: its bus, subgoal cache, λ, history under ``$COREASON_HOME``."""
        return cls(
            rt.bus,
            cache=rt.cache,
            book=EstimateBook(Path(rt.home) / "plan" / "estimates.json"),
            lam=rt.tiers.settings.lam,
            rt=rt,
        )

    def register(self, name: str, action: Callable[[Subgoal], Any], **kw: Any) -> KindSpec:
        """Offer a kind of subgoal to planners (see :class:`KindSpec` for ``kw``).

        Raises
        ------
        InvalidDAGError
            A cacheable kind without ``verify``: only verified values may be reused.
        """
        spec = KindSpec(name, action, **kw)
        if spec.cacheable and spec.verify is None:
            msg = f"kind {name!r}: a cacheable kind needs verify= (only verified values are reused)"
            raise InvalidDAGError(msg)
        self.kinds[name] = spec
        return spec

    # --- validation ----------------------------------------------------------------------------

    def validate(
        self, proposal: PlanProposal, *, workflow_id: str | None = None
    ) -> tuple[SubgoalDAG, dict[str, str], dict[str, dict[str, Any]]]:
        """The DAG the runtime will run, the subgoals the gate refused, the estimates used.

        Raises
        ------
        InvalidDAGError
            An unknown kind, a duplicate id, an unknown dependency, a cycle.
        """
        unknown = sorted({s.kind for s in proposal.subgoals} - set(self.kinds))
        if unknown:
            msg = f"the plan uses unknown kind(s) {unknown}; registered: {sorted(self.kinds)}"
            raise InvalidDAGError(msg, workflow_id=workflow_id)
        dag_id = f"plan-{uuid.uuid4().hex[:8]}"
        tasks = [self._task(s, i) for i, s in enumerate(proposal.subgoals)]
        dag = SubgoalDAG(
            id=dag_id, workflow_id=workflow_id, tasks=tasks, budget=Budget(wall_s=self.max_wall_s)
        )  # ids, dependencies and cycles are checked here
        self._probe_new_kinds(dag)
        estimates = {t.id: self._estimate(t) for t in dag.tasks}
        refused = self._gate(dag, estimates, workflow_id)
        if refused:
            kept = [t for t in dag.tasks if t.id not in refused]
            dag = SubgoalDAG(id=dag_id, workflow_id=workflow_id, tasks=kept, budget=dag.budget)
        return dag, refused, estimates

    def _task(self, s: Any, order: int) -> TaskSpec:
        kind = self.kinds[s.kind]
        caps = [c for c in (s.budget_wall_s, kind.max_wall_s) if c is not None]
        reusable = kind.cacheable or s.reusable
        reuse = self.cache.hit_ratio("request") if self.cache is not None and reusable else 0.0
        return TaskSpec(
            id=s.id,
            kind=kind.task_kind,
            deps=list(s.deps),
            eta=s.eta if s.eta is not None else kind.eta,
            p_succ=s.p_succ if s.p_succ is not None else kind.p_succ,
            max_attempts=kind.max_attempts,  # the plan cannot ask for more tries
            budget=Budget(wall_s=min(caps) if caps else None),
            # only the runtime writes meta: a plan's own keys (a priority, say) never arrive
            meta={"kind": s.kind, "inputs": dict(s.inputs), "reuse": reuse, "planned": order},
        )

    def _probe_new_kinds(self, dag: SubgoalDAG) -> None:
        """On the first sight of a kind with a probe, run it once and take its estimate."""
        for task in dag.tasks:
            name = task.meta["kind"]
            kind = self.kinds[name]
            if kind.probe is None or self.book.seen(name):
                continue
            probe = kind.probe(task) if callable(kind.probe) else kind.probe
            est = probe.run(task)
            self.book.seed(name, est.eta, est.p_succ, source=f"probe:{type(probe).__name__}")
            known = self.book.get(name)
            assert known is not None
            self.bus.emit(
                EventType.ESTIMATE_UPDATED,
                workflow_id=dag.workflow_id,
                source="plan",
                dag_id=dag.id,
                task=task.id,
                eta=known.eta,
                p_succ=known.p_succ,
                by=known.source,
            )

    def _estimate(self, task: TaskSpec) -> dict[str, Any]:
        """The runtime's ETA and p_succ for ``task`` (history or probe, else the kind's prior,
        for the gate), and what the scheduler uses (the planner's guess only where the runtime
        knows nothing)."""
        kind = self.kinds[task.meta["kind"]]
        known = self.book.get(kind.name)
        if known is not None:
            task.eta, task.p_succ = known.eta, known.p_succ
            return {"eta": known.eta, "p_succ": known.p_succ, "source": known.source}
        source = "planner" if (task.eta, task.p_succ) != (kind.eta, kind.p_succ) else "prior"
        return {"eta": task.eta, "p_succ": kind.p_succ, "source": source}

    def _gate(
        self, dag: SubgoalDAG, estimates: dict[str, dict[str, Any]], workflow_id: str | None
    ) -> dict[str, str]:
        refused: dict[str, str] = {}
        succ = dag.successors()
        for task in dag.tasks:
            kind = self.kinds[task.meta["kind"]]
            if kind.cost <= 0 or task.id in refused:
                continue
            p = estimates[task.id]["p_succ"]  # the runtime's, never the planner's
            decision = self.gate.decide(
                f"subgoal {task.id}",
                Prediction(gain=p, cost=self.lam * kind.cost, detail={"kind": kind.name}),
                region={"dag": dag.id, "task": task.id},
                workflow_id=workflow_id,
            )
            if decision.allowed:
                continue
            refused[task.id] = f"what-if gate: {decision.reason}"
            stack = list(succ[task.id])
            while stack:
                nxt = stack.pop()
                if nxt not in refused:
                    refused[nxt] = f"depends on refused subgoal {task.id!r}"
                    stack.extend(succ[nxt])
        return refused

    # --- running -------------------------------------------------------------------------------

    def run(
        self,
        planner: Planner | PlanProposal | dict[str, Any] | str,
        goal: str = "",
        *,
        workflow_id: str | None = None,
        policy: str = "cpcs",
    ) -> PlanResult:
        """Ask ``planner`` (or take a proposal), validate, gate, run and learn.

        Raises
        ------
        InvalidDAGError
            The proposal is not a valid plan over the registered kinds.
        """
        if isinstance(planner, (PlanProposal, dict, str)):
            proposal = as_proposal(planner)
        else:
            proposal = as_proposal(planner.propose(goal, sorted(self.kinds)))
        dag, refused, estimates = self.validate(proposal, workflow_id=workflow_id)
        if not dag.tasks:
            return PlanResult("refused", {}, refused, estimates, None)
        values: dict[str, Any] = {}
        hits: list[str] = []
        actions = {t.id: self._action(t, values, hits, workflow_id) for t in dag.tasks}
        result = self._scheduler(policy).run_sync(dag, actions, check=False)
        for tid, rec in result.tasks.items():
            kind = dag.task(tid).meta["kind"]
            if tid not in hits and rec.attempts:
                self.book.observe(kind, rec.run_s, rec.attempts, rec.state == "done")
        status = result.status if not refused or result.status != "succeeded" else "refused"
        return PlanResult(status, values, refused, estimates, result, hits)

    def _scheduler(self, policy: str) -> Scheduler:
        kw: dict[str, Any] = {"policy": policy, "pin_cpus": False, "tick_s": 0.02}
        if self.cores is not None:
            kw["cores"] = self.cores
        if self._rt is not None:
            return Scheduler.for_runtime(self._rt, **kw)
        return Scheduler(self.bus, **kw)

    def _action(
        self, task: TaskSpec, values: dict[str, Any], hits: list[str], workflow_id: str | None
    ) -> Action:
        kind = self.kinds[task.meta["kind"]]
        inputs = task.meta["inputs"]

        def target(gate: PauseGate, attempt: int) -> bool:
            needs = {d: values[d] for d in task.deps}  # they are done: the scheduler waits
            key = f"{kind.name} {json.dumps(inputs, sort_keys=True, default=str)}"
            cached = self._cached(kind, key, workflow_id)
            if cached is not None:
                values[task.id] = cached[0]
                hits.append(task.id)
                return True
            sub = Subgoal(task.id, kind.name, dict(inputs), needs, workflow_id, attempt, gate)
            value = kind.action(sub)
            if kind.verify is not None and not kind.verify(value):
                msg = f"subgoal {task.id!r}: its value failed verification"
                raise ValueError(msg)
            values[task.id] = value
            self._admit(kind, key, value, workflow_id)
            return True

        def start(spec: TaskSpec, attempt: int) -> Job:
            return InProcessJob(lambda gate: target(gate, attempt))

        return start

    def _cached(self, kind: KindSpec, key: str, workflow_id: str | None) -> tuple[Any] | None:
        if not kind.cacheable or self.cache is None:
            return None
        try:
            hit = self.cache.lookup_request(f"plan:{kind.name}", key, workflow_id=workflow_id)
        except CoreasonError:
            return None
        if hit is None or hit.value_json is None:
            return None
        value = json.loads(hit.value_json)
        return (value,) if kind.verify is None or kind.verify(value) else None

    def _admit(self, kind: KindSpec, key: str, value: Any, workflow_id: str | None) -> None:
        if not kind.cacheable or self.cache is None or kind.verify is None:
            return
        verify = kind.verify

        def verifier(prompt: str, value_json: str) -> bool:
            return bool(verify(json.loads(value_json)))

        verifier.__qualname__ = f"plan.{kind.name}.verify"
        try:
            self.cache.admit_request(
                f"plan:{kind.name}",
                key,
                json.dumps(value, default=str),
                workflow_id or "default",
                verifier,
            )
        except CoreasonError:  # a cache that refuses never fails a subgoal that ran
            return

    def kinds_offered(self) -> Sequence[str]:
        return sorted(self.kinds)
