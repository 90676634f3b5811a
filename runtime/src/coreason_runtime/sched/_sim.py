"""A discrete-event simulator of a DAG on N cores, driving the same policies as the scheduler.

Attempt durations and outcomes are drawn once per (task, attempt) from a seed, so every policy
faces the same realisation (common random numbers) and differences are due to the policy.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from coreason_runtime.sched._critical import Policy, TaskView, allocate
from coreason_runtime.sched._dag import SubgoalDAG, TaskSpec

__all__ = [
    "DeadlineJob",
    "Realisation",
    "SimResult",
    "random_deadline_jobs",
    "random_layered_dag",
    "realise",
    "simulate",
    "simulate_deadlines",
]


@dataclass(frozen=True)
class Realisation:
    """True durations and outcomes of every attempt of every task (hidden from policies)."""

    durations: dict[str, list[float]]
    successes: dict[str, list[bool]]


@dataclass
class SimResult:
    makespan: float
    preemptions: int = 0
    failed: list[str] = field(default_factory=list)


def random_layered_dag(
    rng: random.Random,
    *,
    n_min: int = 20,
    n_max: int = 60,
    sigma: float = 1.0,
    p_range: tuple[float, float] = (0.5, 1.0),
    max_attempts: int = 50,
) -> SubgoalDAG:
    """A random layered DAG: lognormal ETAs, p_succ uniform in ``p_range``."""
    n = rng.randint(n_min, n_max)
    n_layers = max(2, round(math.sqrt(n)))
    layers: list[list[str]] = [[] for _ in range(n_layers)]
    tasks: list[TaskSpec] = []
    for i in range(n):
        layer = 0 if i < n_layers else rng.randrange(n_layers)
        if i < n_layers:
            layer = i
        tid = f"t{i}"
        deps: list[str] = []
        if layer > 0:
            prev = [x for lay in layers[:layer] for x in lay]
            k = min(len(prev), rng.randint(1, 3))
            deps = rng.sample(layers[layer - 1], 1) if layers[layer - 1] else []
            deps = sorted(set(deps + rng.sample(prev, k)))
        layers[layer].append(tid)
        tasks.append(
            TaskSpec(
                id=tid,
                deps=deps,
                eta=rng.lognormvariate(0.0, sigma),
                p_succ=rng.uniform(*p_range),
                max_attempts=max_attempts,
            )
        )
    return SubgoalDAG(id=f"dag-{n}", tasks=tasks)


def realise(dag: SubgoalDAG, rng: random.Random, *, noise: float = 0.3) -> Realisation:
    """Draw each attempt's true duration (t̂ × lognormal noise) and outcome (Bernoulli p)."""
    durations: dict[str, list[float]] = {}
    successes: dict[str, list[bool]] = {}
    for t in dag.tasks:
        durations[t.id] = [t.eta * rng.lognormvariate(0.0, noise) for _ in range(t.max_attempts)]
        oks = [rng.random() < t.p_succ for _ in range(t.max_attempts)]
        oks[-1] = oks[-1] or t.p_succ > 0  # "failures retried": the last attempt succeeds
        successes[t.id] = oks
    return Realisation(durations, successes)


def simulate(
    dag: SubgoalDAG,
    real: Realisation,
    policy: Policy,
    *,
    cores: int = 2,
    preempt_cost: float = 0.0,
) -> SimResult:
    """Run ``dag`` under ``policy`` on ``cores`` cores; returns the makespan.

    Decisions are taken at every completion (the live scheduler also re-decides on its tick).
    A preempted attempt keeps its progress and resumes later, paying ``preempt_cost`` seconds.
    """
    specs = {t.id: t for t in dag.tasks}
    order = {t.id: i for i, t in enumerate(dag.tasks)}
    done: set[str] = set()
    attempt = dict.fromkeys(specs, 0)
    progress = dict.fromkeys(specs, 0.0)
    ready_since: dict[str, float] = {}
    running: set[str] = set()
    now = 0.0
    preemptions = 0
    penalty = dict.fromkeys(specs, 0.0)
    while len(done) < len(specs):
        for tid, spec in specs.items():
            if tid not in done and tid not in ready_since and all(d in done for d in spec.deps):
                ready_since[tid] = now
        views = [
            TaskView(
                id=tid,
                deps=specs[tid].deps,
                eta=specs[tid].eta,
                p_succ=specs[tid].p_succ,
                attempts_left=specs[tid].max_attempts - attempt[tid],
                ready_since=ready_since.get(tid, math.inf),
                elapsed=progress[tid],
                order=order[tid],
            )
            for tid in specs
            if tid not in done
        ]
        prios = policy.priorities(views)
        candidates = [v for v in views if v.id in ready_since]
        chosen = set(
            allocate(
                candidates,
                prios,
                cores=cores,
                gpus=0,
                running=running,
                preemptive=policy.preemptive,
            )
        )
        for tid in running - chosen:
            preemptions += 1
            penalty[tid] += preempt_cost
        running = chosen
        if not running:
            break  # nothing can run: a task can never succeed

        # advance to the next completion
        def left(tid: str) -> float:
            return real.durations[tid][attempt[tid]] + penalty[tid] - progress[tid]

        step = min(left(tid) for tid in running)
        now += step
        for tid in list(running):
            progress[tid] += step
            if left(tid) <= 1e-12:
                ok = real.successes[tid][attempt[tid]]
                attempt[tid] += 1
                progress[tid] = 0.0
                penalty[tid] = 0.0
                running.discard(tid)
                if ok:
                    done.add(tid)
                elif attempt[tid] >= specs[tid].max_attempts:
                    return SimResult(math.inf, preemptions, [tid])
    return SimResult(now, preemptions)


@dataclass(frozen=True)
class DeadlineJob:
    """A job with an arrival time, an estimated and a true duration, and a deadline."""

    id: str
    arrival: float
    eta: float
    true: float
    deadline: float


def random_deadline_jobs(
    rng: random.Random, *, n: int = 40, cores: int = 2, load: float = 1.2, noise: float = 0.3
) -> list[DeadlineJob]:
    """Poisson arrivals at ``load`` × capacity; true duration = ETA × U(1-noise, 1+noise)."""
    jobs = []
    t = 0.0
    rate = load * cores  # mean ETA is 1, so this many jobs per second fill ``load`` × capacity
    for i in range(n):
        t += rng.expovariate(rate)
        eta = rng.lognormvariate(-0.125, 0.5)
        true = eta * rng.uniform(1 - noise, 1 + noise)
        jobs.append(DeadlineJob(f"j{i}", t, eta, true, t + eta * rng.uniform(1.2, 4.0)))
    return jobs


def simulate_deadlines(
    jobs: list[DeadlineJob], policy: str, *, cores: int = 2, quantum: float = 0.05
) -> int:
    """Deadline misses of ``policy`` ("edf" or "css") on ``cores``, preempting every quantum.

    EDF runs the earliest deadlines. CSS gives each job a :class:`DeadlineConstraint` (slack
    from its *estimated* remaining time) and funds, core by core, the run that the
    :class:`SlackScheduler` picks; jobs it declares lost are dropped (and count as missed).
    """
    from coreason_runtime.sched._slack import DeadlineConstraint, SlackAction, SlackScheduler

    now = 0.0
    done_work = {j.id: 0.0 for j in jobs}
    finished: dict[str, float] = {}
    dropped: set[str] = set()
    by_id = {j.id: j for j in jobs}

    def est_left(j: DeadlineJob) -> float:
        return max(j.eta - done_work[j.id], 0.05 * j.eta)

    def clock() -> float:
        return now

    cons = {
        j.id: DeadlineConstraint(j.id, j.deadline, functools.partial(est_left, j), clock=clock)
        for j in jobs
    }
    while len(finished) + len(dropped) < len(jobs):
        active = [
            j
            for j in jobs
            if j.arrival <= now + 1e-12 and j.id not in finished and j.id not in dropped
        ]
        if not active:
            now = min(j.arrival for j in jobs if j.id not in finished and j.id not in dropped)
            continue
        if policy == "edf":
            run = sorted(active, key=lambda j: j.deadline)[:cores]
        else:
            css = SlackScheduler([cons[j.id] for j in active])
            current = css.slacks()
            picked: list[str] = []
            for _ in range(min(cores, len(active))):
                # running i (with the jobs already picked) keeps their slacks; the rest lose
                # a quantum
                acts = [
                    SlackAction(j.id, predict=_keep(current, [*picked, j.id]), others=-quantum)
                    for j in active
                    if j.id not in picked
                ]
                a = css.choose(acts, current)
                if a is None:
                    break
                dropped.update(css.lost)
                if a.name in css.lost:
                    break
                picked.append(a.name)
            run = [by_id[i] for i in picked if i not in dropped]
        step = quantum
        for j in run:
            step = min(step, j.true - done_work[j.id])
        nxt = [j.arrival for j in jobs if j.arrival > now + 1e-12]
        if nxt:
            step = min(step, min(nxt) - now)
        step = max(step, 1e-9)
        now += step
        for j in run:
            done_work[j.id] += step
            if done_work[j.id] >= j.true - 1e-9:
                finished[j.id] = now
    return sum(1 for j in jobs if j.id not in finished or finished[j.id] > j.deadline + 1e-9)


def _keep(current: dict[str, float], ids: list[str]) -> Callable[[], dict[str, float]]:
    return lambda: {k: current[k] for k in ids}
