"""Expected critical paths and the priority policies (CPCS, HEFT, FIFO, Dask order).

Every policy is a pure function from the state of a DAG to a priority per task (larger runs
first), so the live scheduler and the discrete-event simulator use the very same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coreason_runtime.sched._dag import expected_attempts

__all__ = [
    "POLICIES",
    "CriticalPathPolicy",
    "DaskOrderPolicy",
    "FifoPolicy",
    "HeftPolicy",
    "Policy",
    "TaskView",
    "allocate",
    "critical_path",
    "upward_ranks",
]


@dataclass
class TaskView:
    """What a policy may know about one unfinished task (never its true duration)."""

    id: str
    deps: Sequence[str]
    eta: float
    p_succ: float
    attempts_left: int
    ready_since: float = 0.0
    elapsed: float = 0.0  # seconds run in the current attempt
    cores: int = 1
    gpus: int = 0
    order: int = 0  # submission order, for FIFO ties
    reuse: float = 0.0  # how likely its result is reused (the subgoal cache's hit ratio)

    def expected_remaining(self) -> float:
        """Expected seconds to finish, counting retries through p_succ."""
        p = self.p_succ
        current = max(self.eta - self.elapsed, 0.05 * self.eta)
        if self.attempts_left <= 1:
            return current
        return current + (1.0 - p) * self.eta * expected_attempts(p, self.attempts_left - 1)


def _successors(tasks: Iterable[TaskView]) -> dict[str, list[str]]:
    views = list(tasks)
    live = {t.id for t in views}
    succ: dict[str, list[str]] = {t.id: [] for t in views}
    for t in views:
        for d in t.deps:
            if d in live:
                succ[d].append(t.id)
    return succ


def upward_ranks(
    durations: Mapping[str, float], succ: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """rank(i) = d(i) + max over successors of rank(s): the longest path from i to an exit."""
    rank: dict[str, float] = {}
    # iterative post-order so deep DAGs never hit the recursion limit
    for root in durations:
        if root in rank:
            continue
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in rank:
                continue
            if expanded:
                best = max((rank[s] for s in succ.get(node, ())), default=0.0)
                rank[node] = durations[node] + best
            else:
                stack.append((node, True))
                stack.extend((s, False) for s in succ.get(node, ()) if s not in rank)
    return rank


def critical_path(tasks: Sequence[TaskView]) -> tuple[list[str], float]:
    """The expected critical path through the unfinished tasks and its expected length."""
    if not tasks:
        return [], 0.0
    succ = _successors(tasks)
    ranks = upward_ranks({t.id: t.expected_remaining() for t in tasks}, succ)
    live = {t.id for t in tasks}
    roots = [t.id for t in tasks if not any(d in live for d in t.deps)]
    node = max(roots, key=lambda n: ranks[n])
    length = ranks[node]
    path = [node]
    while succ[node]:
        node = max(succ[node], key=lambda n: ranks[n])
        path.append(node)
    return path, length


class Policy(Protocol):
    """Priorities for the unfinished tasks of a DAG: larger runs first."""

    name: str
    preemptive: bool

    def priorities(self, tasks: Sequence[TaskView]) -> dict[str, float]: ...


class CriticalPathPolicy:
    """CPCS: the expected remaining critical path (t̂/p_succ with retries) ranks every task;
    a task whose result is likely reused (``reuse``, the subgoal cache's hit ratio) ranks
    ``1 + reuse`` times higher, so what others will reuse is done first."""

    name = "cpcs"

    def __init__(self, *, preemptive: bool = True) -> None:
        self.preemptive = preemptive

    def priorities(self, tasks: Sequence[TaskView]) -> dict[str, float]:
        ranks = upward_ranks({t.id: t.expected_remaining() for t in tasks}, _successors(tasks))
        return {t.id: ranks[t.id] * (1.0 + t.reuse) for t in tasks}


class HeftPolicy:
    """HEFT-style list scheduling: static upward rank on mean t̂, ignoring p_succ."""

    name = "heft"
    preemptive = False

    def __init__(self) -> None:
        self._static: dict[str, float] = {}

    def priorities(self, tasks: Sequence[TaskView]) -> dict[str, float]:
        missing = [t for t in tasks if t.id not in self._static]
        if missing:  # computed once on the whole DAG, as HEFT does
            self._static.update(upward_ranks({t.id: t.eta for t in tasks}, _successors(tasks)))
        return {t.id: self._static[t.id] for t in tasks}


class FifoPolicy:
    """First ready, first run."""

    name = "fifo"
    preemptive = False

    def priorities(self, tasks: Sequence[TaskView]) -> dict[str, float]:
        return {t.id: -(t.ready_since * 1e6 + t.order) for t in tasks}


class DaskOrderPolicy:
    """Dask's static task ordering (``dask.order.order``), as its schedulers use it."""

    name = "dask"
    preemptive = False

    def __init__(self) -> None:
        self._static: dict[str, float] = {}

    def priorities(self, tasks: Sequence[TaskView]) -> dict[str, float]:
        if any(t.id not in self._static for t in tasks):
            from dask.order import order

            live = {t.id for t in tasks}
            dsk = {t.id: (_noop, *[d for d in t.deps if d in live]) for t in tasks}
            ranks = order(dsk)  # type: ignore[arg-type]  # legacy tuple tasks are accepted
            self._static.update({str(k): -float(v) for k, v in ranks.items()})
        return {t.id: self._static[t.id] for t in tasks}


def _noop(*args: object) -> None:
    return None


POLICIES: dict[str, type] = {
    "cpcs": CriticalPathPolicy,
    "heft": HeftPolicy,
    "fifo": FifoPolicy,
    "dask": DaskOrderPolicy,
}


def allocate(
    candidates: Sequence[TaskView],
    priorities: Mapping[str, float],
    *,
    cores: int,
    gpus: int,
    running: Iterable[str] = (),
    preemptive: bool,
    hysteresis: float = 0.2,
) -> list[str]:
    """Which candidates (ready, running or paused) run now, greedily by priority.

    Without preemption the running tasks keep their slots. With it, a running task keeps its
    slot unless a waiting task's priority beats it by more than ``hysteresis`` (relative), so
    near-ties do not thrash.
    """
    running_set = set(running)

    def score(t: TaskView) -> float:
        p = priorities.get(t.id, 0.0)
        if t.id in running_set:
            return p + abs(p) * hysteresis + 1e-9
        return p

    chosen: list[str] = []
    free_c, free_g = cores, gpus
    if not preemptive:
        for t in candidates:
            if t.id in running_set:
                chosen.append(t.id)
                free_c -= t.cores
                free_g -= t.gpus
        pool = [t for t in candidates if t.id not in running_set]
    else:
        pool = list(candidates)
    for t in sorted(pool, key=score, reverse=True):
        need_c = min(t.cores, cores)  # a task wider than the machine gets the whole machine
        if need_c <= free_c and t.gpus <= free_g:
            chosen.append(t.id)
            free_c -= need_c
            free_g -= t.gpus
    return chosen
