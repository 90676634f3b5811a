"""CPCS: the async critical-path scheduler that starts, pauses, resumes and stops real jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    ConfigurationError,
    SchedulerError,
    TaskBudgetExceededError,
    TaskFailedError,
    UnknownDependencyError,
    WorkerDiedError,
)
from coreason_runtime.sched._critical import POLICIES, Policy, TaskView, allocate, critical_path
from coreason_runtime.sched._dag import SubgoalDAG, TaskSpec
from coreason_runtime.sched._jobs import Job
from coreason_runtime.sched._probes import Estimate, Probe
from coreason_runtime.sched._state import TERMINAL, Action, DAGResult, _Dag, _Task

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["Scheduler"]


class Scheduler:
    """Schedules subgoal DAGs on this machine's cores, preempting off-path jobs physically.

    Every ``tick_s`` seconds it polls the jobs, enforces budgets, recomputes each DAG's
    expected critical path (ETA/p_succ with retries) and gives the cores to the tasks with
    the longest expected remaining path: off-path jobs are paused (SIGSTOP or cgroup freeze,
    the decode engine's own pause for decode sessions), reniced and moved off the critical
    path's cores.

    Parameters
    ----------
    bus:
        Where schedule decisions, preemptions and task events are published.
    cores, gpus:
        Capacity; defaults to the CPUs this process may use and no GPU.
    tick_s:
        Decision period, 0.05–0.2 s is typical.
    policy:
        ``"cpcs"`` (default), or ``"heft"``, ``"fifo"``, ``"dask"`` to compare.
    hysteresis:
        How much (relative) a waiting task must out-rank a running one to preempt it.
    """

    def __init__(
        self,
        bus: EventBus | None = None,
        *,
        cores: int | None = None,
        gpus: int = 0,
        tick_s: float = 0.1,
        policy: str = "cpcs",
        hysteresis: float = 0.2,
        pin_cpus: bool = True,
        source: str = "sched",
    ) -> None:
        if policy not in POLICIES:
            msg = f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}"
            raise ConfigurationError(msg)
        if not 0.001 <= tick_s <= 10:
            msg = f"tick_s must be between 0.001 and 10 seconds, got {tick_s}"
            raise ConfigurationError(msg)
        self.bus = bus or EventBus()
        self.cpus = sorted(os.sched_getaffinity(0))
        self.cores = cores or len(self.cpus)
        self.gpus = gpus
        self.tick_s = tick_s
        self.policy_name = policy
        self.hysteresis = hysteresis
        self.pin_cpus = pin_cpus
        self.source = source
        self._dags: dict[str, _Dag] = {}
        self._lock = threading.RLock()
        self._loop_task: asyncio.Task[None] | None = None
        self._rt: Coordinator | None = None
        self._last_decision: tuple[str, ...] = ()
        # what each running job was last given, keyed by task: (job, on path, cpus); a retry's
        # new job compares unequal, so it gets its priority too
        self._priority_set: dict[str, tuple[Job, bool, tuple[int, ...]]] = {}

    @classmethod
    def for_runtime(cls, rt: Coordinator, **kwargs: Any) -> Scheduler:
        """The scheduler of a Coordinator: publishes on ``rt.bus``, runs on ``rt.loop``."""
        sched = cls(rt.bus, **kwargs)
        sched._rt = rt
        return sched

    # --- public API --------------------------------------------------------------------------

    async def run(
        self, dag: SubgoalDAG | str, actions: Mapping[str, Action], *, check: bool = True
    ) -> DAGResult:
        """Run ``dag`` to completion; each task's attempts are started by ``actions[id]``.

        Raises :class:`TaskFailedError`, :class:`WorkerDiedError` or
        :class:`TaskBudgetExceededError` (each with ``.result``) when ``check`` and the DAG
        did not succeed.
        """
        if isinstance(dag, str):
            dag = SubgoalDAG.from_json(dag)
        missing = [t.id for t in dag.tasks if t.id not in actions]
        if missing:
            msg = f"no action given for tasks {missing}"
            raise UnknownDependencyError(msg, workflow_id=dag.workflow_id)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        policy: Policy = POLICIES[self.policy_name]()
        with self._lock:
            if dag.id in self._dags:
                msg = f"a DAG with id {dag.id!r} is already running"
                raise SchedulerError(msg, workflow_id=dag.workflow_id)
            state = _Dag(
                dag=dag,
                actions=actions,
                policy=policy,
                submitted=now,
                future=loop.create_future(),
                tasks={t.id: _Task(spec=t, order=i) for i, t in enumerate(dag.tasks)},
            )
            self._dags[dag.id] = state
        self._emit(EventType.DAG_SUBMITTED, dag, spec=dag.model_dump(mode="json"))
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._loop())
        result = await state.future
        if check and result.status != "succeeded":
            msg = result.error or result.status
            raise state.error_type(msg, workflow_id=dag.workflow_id, result=result)
        return result

    def run_sync(
        self, dag: SubgoalDAG | str, actions: Mapping[str, Action], *, check: bool = True
    ) -> DAGResult:
        """Blocking :meth:`run`: on the Coordinator's loop when there is one."""
        if self._rt is not None:
            return self._rt.submit(self.run(dag, actions, check=check)).result()
        return asyncio.run(self.run(dag, actions, check=check))

    def update_estimate(
        self,
        dag_id: str,
        task_id: str,
        *,
        eta: float | None = None,
        p_succ: float | None = None,
        source: str = "probe",
    ) -> TaskSpec:
        """Change a task's t̂ and/or p_succ online; the next tick re-plans with it.

        Bad values raise :class:`InvalidEstimateError` and leave the task unchanged.
        """
        with self._lock:
            spec = self._task(dag_id, task_id).spec
            new = spec.model_copy()
            if eta is not None:
                new.eta = eta  # validate_assignment checks it on a copy first
            if p_succ is not None:
                new.p_succ = p_succ
            spec.eta, spec.p_succ = new.eta, new.p_succ
            dag = self._dags[dag_id].dag  # here: once unlocked, the tick may finish the DAG
        self._emit(
            EventType.ESTIMATE_UPDATED,
            dag,
            task=task_id,
            eta=spec.eta,
            p_succ=spec.p_succ,
            by=source,
        )
        return spec

    def apply_probe(self, dag_id: str, task_id: str, probe: Probe) -> Estimate:
        """Run a cheap probe (compile check, pilot run, verifier hint) and apply its estimate."""
        spec = self._task(dag_id, task_id).spec
        est = probe.run(spec)
        self.update_estimate(
            dag_id, task_id, eta=est.eta, p_succ=est.p_succ, source=type(probe).__name__
        )
        return est

    def cancel(
        self, dag_id: str, task_ids: list[str] | None = None, *, reason: str = "plan changed"
    ) -> list[str]:
        """A plan change: abort tasks and everything depending on them (or the whole DAG).

        Their jobs are killed and ``TASK_ABORTED`` is published for each (tool transactions
        listening on the bus drop them as consumers). The rest of the DAG goes on; it
        succeeds once every remaining task is done. Returns the ids aborted.
        """
        with self._lock:
            d = self._dags.get(dag_id)
            if d is None:
                return []
            if task_ids is None:
                d.status, d.error = "cancelled", f"cancelled: {reason}"
                d.error_type = SchedulerError
                return []
            for tid in task_ids:
                self._task(dag_id, tid)  # unknown ids raise before anything changes
            succ = d.dag.successors()
            doomed, stack = set(), list(task_ids)
            while stack:
                tid = stack.pop()
                if tid not in doomed:
                    doomed.add(tid)
                    stack.extend(succ[tid])
            aborted = []
            for tid in sorted(doomed, key=lambda x: d.tasks[x].order):
                t = d.tasks[tid]
                if t.state not in TERMINAL:
                    t.cancelled = True
                    self._abort(d, t, reason)
                    aborted.append(tid)
            return aborted

    def critical_path(self, dag_id: str) -> list[str]:
        with self._lock:
            return list(self._dags[dag_id].path) if dag_id in self._dags else []

    def close(self) -> None:
        """Kill every job still running; every DAG still running ends ``cancelled``. Idempotent."""
        with self._lock:
            now = time.monotonic()
            for d in list(self._dags.values()):
                if d.status is None:
                    d.status, d.error = "cancelled", "cancelled: scheduler closed"
                    d.error_type = SchedulerError
                self._finish_if_done(d, now)  # kills its jobs and resolves whoever awaits it
            self._priority_set.clear()
        if self._loop_task is not None:
            with contextlib.suppress(RuntimeError):
                self._loop_task.get_loop().call_soon_threadsafe(self._loop_task.cancel)

    # --- the tick ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            with self._lock:
                self._tick()
                if not self._dags:
                    self._loop_task = None
                    return
            await asyncio.sleep(self.tick_s)

    def _task(self, dag_id: str, task_id: str) -> _Task:
        d = self._dags.get(dag_id)
        if d is None or task_id not in d.tasks:
            msg = f"no task {task_id!r} in a running DAG {dag_id!r}"
            raise UnknownDependencyError(msg)
        return d.tasks[task_id]

    def _tick(self) -> None:
        now = time.monotonic()
        for d in list(self._dags.values()):
            for t in d.tasks.values():
                t.account(now)
            self._poll(d, now)
            self._enforce(d, now)
            d.promote(now)
            self._finish_if_done(d, now)
        self._decide(now)

    def _poll(self, d: _Dag, now: float) -> None:
        for t in d.tasks.values():
            if t.state not in ("running", "paused") or t.job is None:
                continue
            out = t.job.poll()
            if out is None:
                continue
            t.job = None
            if out.ok:
                t.state = t.rec.state = "done"
                t.rec.finished = now
                self._emit(
                    EventType.TASK_FINISHED,
                    d.dag,
                    task=t.spec.id,
                    attempt=t.attempts,
                    run_s=t.rec.run_s,
                )
                continue
            self._failed_attempt(d, t, out.error or "failed", died=out.died)

    def _failed_attempt(self, d: _Dag, t: _Task, error: str, *, died: bool) -> None:
        retry = t.attempts < t.spec.max_attempts
        t.rec.error = error
        self._emit(
            EventType.TASK_FAILED,
            d.dag,
            task=t.spec.id,
            attempt=t.attempts,
            error=error,
            worker_died=died,
            will_retry=retry,
        )
        if retry:
            t.state = "ready"
            return
        t.state = t.rec.state = "failed"
        if d.status is None:
            d.status = "failed"
            d.error = f"task {t.spec.id!r} failed after {t.attempts} attempt(s): {error}"
            d.error_type = WorkerDiedError if died else TaskFailedError

    def _enforce(self, d: _Dag, now: float) -> None:
        for t in d.tasks.values():
            what = t.over_budget()
            if what is not None and t.state in ("running", "paused"):
                self._abort(d, t, f"over budget ({what})")
                t.state = t.rec.state = "failed"
                if d.status is None:
                    d.status, d.error = "over_budget", f"task {t.spec.id!r} over budget: {what}"
                    d.error_type = TaskBudgetExceededError
        d.check_budget(now)

    def _abort(self, d: _Dag, t: _Task, reason: str) -> None:
        if t.state in TERMINAL:
            return
        if t.job is not None:
            t.job.kill()
            t.job = None
        t.state = t.rec.state = "aborted"
        t.rec.error = t.rec.error or reason
        self._emit(EventType.TASK_ABORTED, d.dag, task=t.spec.id, reason=reason)

    def _finish_if_done(self, d: _Dag, now: float) -> None:
        if d.status is None and all(t.state == "done" or t.cancelled for t in d.tasks.values()):
            d.status = "succeeded"
        if d.status is None:
            return
        for t in d.tasks.values():
            self._abort(d, t, f"DAG {d.status}")
        result = d.result(now)
        del self._dags[d.dag.id]
        # the tick may run on another loop (thread) than the one awaiting this DAG
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
            d.future.get_loop().call_soon_threadsafe(_resolve, d.future, result)

    # --- allocation --------------------------------------------------------------------------

    def _decide(self, now: float) -> None:
        candidates: list[TaskView] = []
        prios: dict[str, float] = {}
        running: list[str] = []
        where: dict[str, tuple[_Dag, _Task]] = {}
        on_path: set[str] = set()
        preemptive = False
        for d in self._dags.values():
            views = d.views()
            path, length = critical_path(views)
            if path != d.path:
                d.path = path
                self._emit(EventType.CRITICAL_PATH, d.dag, path=path, expected_s=length)
            preemptive = preemptive or d.policy.preemptive
            local = d.policy.priorities(views)
            for v in views:
                t = d.tasks[v.id]
                if t.state not in ("ready", "running", "paused"):
                    continue
                tid = v.id
                key = f"{d.dag.id}/{tid}"
                where[key] = (d, t)
                prios[key] = local[tid]
                v.id = key
                candidates.append(v)
                if t.state == "running":
                    running.append(key)
                if tid in path:
                    on_path.add(key)
        chosen = allocate(
            candidates,
            prios,
            cores=self.cores,
            gpus=self.gpus,
            running=running,
            preemptive=preemptive,
            hysteresis=self.hysteresis,
        )
        chosen_set = set(chosen)
        started, paused, resumed = [], [], []
        for key in running:
            if key not in chosen_set:
                d, t = where[key]
                self._pause(d, t)
                paused.append(key)
        for key in chosen:
            d, t = where[key]
            if t.state == "paused":
                self._resume(d, t)
                resumed.append(key)
            elif t.state == "ready":
                self._start(d, t, now)
                started.append(key)
        self._prioritise(chosen, on_path, where)
        decision = tuple(sorted(k for k in chosen if where[k][1].state == "running"))
        if started or paused or resumed or decision != self._last_decision:
            self._last_decision = decision
            self.bus.emit(
                EventType.SCHEDULE_DECIDED,
                source=self.source,
                policy=self.policy_name,
                running=list(decision),
                started=started,
                preempted=paused,
                resumed=resumed,
            )

    def _start(self, d: _Dag, t: _Task, now: float) -> None:
        t.attempts += 1
        t.attempt_run_s = 0.0
        t.attempt_flops = 0.0
        t.last = now
        if t.rec.started is None:
            t.rec.started = now - d.submitted
        try:
            t.job = d.actions[t.spec.id](t.spec, t.attempts)
        except Exception as e:  # the action could not start: a failed attempt, typed below
            t.job = None
            self._failed_attempt(d, t, f"could not start: {type(e).__name__}: {e}", died=False)
            return
        t.state = t.rec.state = "running"
        self._emit(
            EventType.TASK_STARTED,
            d.dag,
            task=t.spec.id,
            attempt=t.attempts,
            pid=getattr(t.job, "pid", None),
            kind=t.spec.kind.value,
        )

    def _pause(self, d: _Dag, t: _Task) -> None:
        assert t.job is not None
        t.job.pause()
        t.state = t.rec.state = "paused"
        t.rec.preemptions += 1
        self._emit(
            EventType.TASK_PREEMPTED,
            d.dag,
            task=t.spec.id,
            attempt=t.attempts,
            pid=getattr(t.job, "pid", None),
        )

    def _resume(self, d: _Dag, t: _Task) -> None:
        assert t.job is not None
        t.job.resume()
        t.state = t.rec.state = "running"
        t.last = time.monotonic()
        self._emit(EventType.TASK_RESUMED, d.dag, task=t.spec.id, attempt=t.attempts)

    def _prioritise(
        self, chosen: list[str], on_path: set[str], where: dict[str, tuple[_Dag, _Task]]
    ) -> None:
        """On-path jobs: nice 0 and their own cores; off-path: reniced onto the rest."""
        free = list(self.cpus)
        ordered = sorted(chosen, key=lambda k: k not in on_path)
        for key in ordered:
            _, t = where[key]
            if t.job is None or t.state != "running":
                continue
            n = max(1, min(t.spec.resources.cpu_cores, len(free)))
            cpus = tuple(free[:n]) if self.pin_cpus and len(free) >= n else ()
            if self.pin_cpus and len(free) > n:
                free = free[n:]
            last = self._priority_set.get(key)
            if last is None or last[0] is not t.job or last[1:] != (key in on_path, cpus):
                self._priority_set[key] = (t.job, key in on_path, cpus)
                t.job.set_priority(key in on_path, list(cpus) or None)
        for key in [k for k in self._priority_set if k not in where]:
            del self._priority_set[key]  # finished or aborted: forget its job

    def _emit(self, type: EventType, dag: SubgoalDAG, **data: Any) -> None:
        self.bus.emit(type, workflow_id=dag.workflow_id, source=self.source, dag_id=dag.id, **data)


def _resolve(future: asyncio.Future[DAGResult], result: DAGResult) -> None:
    if not future.done():
        future.set_result(result)
