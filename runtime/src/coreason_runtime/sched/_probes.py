"""Cheap probes that update a task's t̂ and p_succ online: compile checks, pilots, verifier hints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from coreason_runtime.sched._dag import TaskSpec

__all__ = ["CompileProbe", "Estimate", "HintProbe", "PilotProbe", "Probe"]

PRIOR_WEIGHT = 4.0
"""Pseudo-observations behind the current p_succ when a probe's evidence is blended in."""


@dataclass(frozen=True)
class Estimate:
    """New estimates for a task; ``None`` leaves a field as it was."""

    eta: float | None = None
    p_succ: float | None = None
    detail: str = ""


class Probe(Protocol):
    """A cheap check whose result refines a task's estimates."""

    def run(self, task: TaskSpec) -> Estimate: ...


def _blend(prior: float, observed: float, weight: float = 1.0) -> float:
    return (prior * PRIOR_WEIGHT + observed * weight) / (PRIOR_WEIGHT + weight)


class CompileProbe:
    """Compile the source a task will run: a syntax error means the attempt cannot succeed."""

    def __init__(self, source: str, filename: str = "<task>") -> None:
        self.source = source
        self.filename = filename

    def run(self, task: TaskSpec) -> Estimate:
        try:
            compile(self.source, self.filename, "exec")
        except SyntaxError as e:
            return Estimate(p_succ=0.0, detail=f"syntax error line {e.lineno}: {e.msg}")
        return Estimate(p_succ=_blend(task.p_succ, 1.0), detail="compiles")


class PilotProbe:
    """Run a tiny pilot (e.g. a simulation at a coarse size) and extrapolate the full ETA.

    ``fn(size)`` does the pilot's real work and returns truthy on success; the full run's ETA
    is ``t_pilot · (full_size / pilot_size) ** exponent``.
    """

    def __init__(
        self,
        fn: Callable[[float], Any],
        *,
        pilot_size: float,
        full_size: float,
        exponent: float = 1.0,
    ) -> None:
        self.fn = fn
        self.pilot_size = pilot_size
        self.full_size = full_size
        self.exponent = exponent

    def run(self, task: TaskSpec) -> Estimate:
        t0 = time.perf_counter()
        try:
            ok = bool(self.fn(self.pilot_size))
        except Exception as e:  # a failing pilot is evidence, not an error of the probe
            ok, detail = False, f"pilot raised {type(e).__name__}: {e}"
        else:
            detail = "pilot ok" if ok else "pilot failed"
        elapsed = time.perf_counter() - t0
        eta = elapsed * (self.full_size / self.pilot_size) ** self.exponent
        return Estimate(eta=eta, p_succ=_blend(task.p_succ, 1.0 if ok else 0.0), detail=detail)


class HintProbe:
    """A verifier's hint: ``fn(task)`` returns a probability of success in [0, 1]."""

    def __init__(self, fn: Callable[[TaskSpec], float], *, weight: float = 2.0) -> None:
        self.fn = fn
        self.weight = weight

    def run(self, task: TaskSpec) -> Estimate:
        hint = float(self.fn(task))
        hint = min(1.0, max(0.0, hint))
        return Estimate(p_succ=_blend(task.p_succ, hint, self.weight), detail=f"hint {hint:.2f}")
