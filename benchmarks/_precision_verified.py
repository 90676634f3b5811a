"""The verified-answer rate of a precision map: bench_verified's tasks, first answer only.

Each map answers the same fixed subset of ``benchmarks/verified_tasks.py`` (taken in turn from
each kind) through the router and the local tier on that map's own decode engine — the loop
a request really runs, grammar on, greedy, same seed — and the task's verifier judges the
first answer as decoded: no retry, no span repair, so the rate measures the map alone. A
task counts as verified only when its first attempt produced the value and the verifier
passed it; ``correct`` is bench_verified's independent audit (numeric agreement with SymPy's
or pint's own answer).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_verified import MAX_TOKENS, audit, subset
from benchmarks.verified_tasks import Task

__all__ = ["VerifiedRate", "verified_rates"]


@dataclasses.dataclass
class VerifiedRate:
    """One map's answers on the task subset."""

    tasks: int = 0
    verified: int = 0
    correct: int = 0
    tokens: int = 0
    seconds: float = 0.0
    by_kind: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # [verified, n]
    answers: list[Any] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.verified / max(1, self.tasks)

    def cell(self) -> str:
        return f"{self.rate:.0%} ({self.verified}/{self.tasks})"


def _one(rt: Any, task: Task, wf: str) -> tuple[bool, bool, int, Any]:
    """(verified, correct, tokens decoded, answer) of the first answer to ``task``."""
    from coreason_runtime import EpistemicYieldError
    from coreason_runtime.verify import run_checks

    try:
        res = rt.router.generate(
            task.schema,
            task.prompt,
            workflow_id=wf,
            tiers=["local"],
            max_tokens=MAX_TOKENS,
            seed=0,
            cache=False,
        )
    except EpistemicYieldError as e:
        return False, False, sum(a.tokens_out for a in e.attempts), None
    first = res.attempts[0] if res.attempts else None
    tokens = first.tokens_out if first is not None else 0
    if len(res.attempts) != 1:  # the first answer did not parse: a later attempt's value
        return False, False, tokens, res.value.model_dump()
    verdict = run_checks([task.check()], res.value, timeout=30.0)
    return verdict.ok, audit(task, res.value), tokens, res.value.model_dump()


def verified_rates(
    loaded: Any, engines: dict[str, Any], n_tasks: int = 24, log: Any = print
) -> dict[str, VerifiedRate]:
    """Each engine's verified-answer rate on the first ``n_tasks`` of the spread subset.

    ``loaded`` is the fp32 :class:`~coreason_runtime.models.LoadedModel` (tokenizer, name,
    revision); each engine (a ``DecodeEngine`` over one map's model, token groups as set on
    it) is wrapped in a local tier of its own. Tasks run interleaved, task by task across
    the engines, so every map sees the same load.
    """
    from coreason_runtime import Coordinator, RuntimeConfig
    from coreason_runtime.tensor._local import LocalTier

    tasks = subset(n_tasks)
    home = Path(tempfile.mkdtemp(prefix="bench-precision-verified-"))
    rt = Coordinator(RuntimeConfig(home=home, oracle=None, subgoal_cache=False))
    out = {label: VerifiedRate() for label in engines}
    tiers = {}
    for label, engine in engines.items():
        variant = dataclasses.replace(loaded, model=engine.model, lock=engine.lock)
        tiers[label] = LocalTier(variant, bus=engine.bus, engine=engine, close_values=True)
    try:
        for i, task in enumerate(tasks):
            for j, (label, tier) in enumerate(tiers.items()):
                wf = f"map-{j}"
                rt.budgets.set(wf, ceiling=None)
                rt.router.set_tiers([tier])
                started = time.perf_counter()
                ok, correct, tokens, answer = _one(rt, task, wf)
                r = out[label]
                r.seconds += time.perf_counter() - started
                r.tasks += 1
                r.verified += ok
                r.correct += correct
                r.tokens += tokens
                r.answers.append(answer)
                kind = r.by_kind.setdefault(task.kind, [0, 0])
                kind[0] += ok
                kind[1] += 1
                log(f"verified {i} {task.kind} [{label}]: {ok} {correct} {answer}")
    finally:
        rt.close()
        shutil.rmtree(home, ignore_errors=True)
    return out
