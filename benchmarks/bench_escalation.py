"""Claim: the cascade answers what it can locally and escalates only the rest, costing less C
than sending every request to the oracle.

Tasks: small arithmetic and differentiation questions whose schema carries a validator that
checks the answer (so a wrong answer is a ValidationFailure fed back to the model, then an
escalation). Local tier: the real SmolLM2 in this process, grammar-constrained. Oracle: a real
`coreason serve` subprocess on 127.0.0.1 reached through the RemoteTier (strict json_schema,
streamed). Offline there is no bigger model to call, so the oracle serves the same SmolLM2,
sampling at temperature 0.7: the figures show the mechanism's accounting, not a stronger
oracle's accuracy. C per token is the same on both tiers (C = T_in + 3·T_out); the last column
prices oracle C at 10× local C, a typical API-to-local price ratio, to show where the money
goes.

Baseline: the same tasks sent straight to the oracle (``tiers=["oracle"]``), same attempts.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sympy as sp  # noqa: E402
from pydantic import BaseModel, ValidationInfo, field_validator  # noqa: E402

from benchmarks._report import write_section  # noqa: E402
from benchmarks._servers import serve_subprocess  # noqa: E402

N_TASKS = int(os.environ.get("ESCALATION_TASKS", "12"))
PRICE_RATIO = 10.0
X = sp.Symbol("x")


class Sum(BaseModel):
    a: int
    b: int
    total: int

    @field_validator("total")
    @classmethod
    def correct(cls, v: int, info: ValidationInfo) -> int:
        a, b = info.data.get("a"), info.data.get("b")
        if a is not None and b is not None and v != a + b:
            msg = f"{a} + {b} is not {v}"
            raise ValueError(msg)
        return v


class Derivative(BaseModel):
    expression: str
    derivative: str

    @field_validator("derivative")
    @classmethod
    def correct(cls, v: str, info: ValidationInfo) -> str:
        try:
            expr = sp.sympify(info.data.get("expression", "0"))
            ok = sp.simplify(sp.sympify(v) - sp.diff(expr, X)) == 0
        except (sp.SympifyError, SyntaxError, TypeError) as e:
            msg = f"cannot read {v!r}: {e}"
            raise ValueError(msg) from e
        if not ok:
            msg = f"d/dx {expr} is not {v}"
            raise ValueError(msg)
        return v


def tasks(n: int) -> list[tuple[type[BaseModel], str]]:
    rng = random.Random(7)
    out: list[tuple[type[BaseModel], str]] = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(2, 40), rng.randint(2, 40)
            out.append((Sum, f"Add {a} and {b}. Give a, b and their total."))
        else:
            k, p = rng.randint(2, 5), rng.randint(2, 4)
            out.append(
                (
                    Derivative,
                    f"Differentiate {k}*x**{p} with respect to x. Give the "
                    "expression and its derivative.",
                )
            )
    return out


def run(rt, task_list, tiers, wf) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from coreason_runtime import EpistemicYieldError

    rt.budgets.set(wf, ceiling=None)
    by = {"local": 0, "oracle": 0, "yield": 0}
    started = time.perf_counter()
    for schema, prompt in task_list:
        try:
            res = rt.router.generate(
                schema, prompt, workflow_id=wf, tiers=tiers, max_tokens=48, cache=False
            )
            by[res.tier] += 1
        except EpistemicYieldError:
            by["yield"] += 1
    ledger = rt.budgets.get(wf)
    local_c = ledger.by_tier.get("local", 0.0)
    oracle_c = ledger.by_tier.get("oracle", 0.0)
    return {
        **by,
        "C": ledger.spent,
        "local_C": local_c,
        "oracle_C": oracle_c,
        "priced": local_c + PRICE_RATIO * oracle_c,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    from coreason_runtime import Coordinator, OracleConfig, RuntimeConfig
    from coreason_runtime.tensor import RemoteTier
    from coreason_runtime.tensor._wiring import LazyLocalTier

    home = Path(tempfile.mkdtemp(prefix="bench-escalation-"))
    with serve_subprocess(home) as port:
        rt = Coordinator(RuntimeConfig(home=home, oracle=None, subgoal_cache=False))

        class SamplingOracle(RemoteTier):
            def complete(self, request, meter):  # type: ignore[no-untyped-def]
                request.temperature = 0.7
                return super().complete(request, meter)

        oracle = SamplingOracle(
            OracleConfig(base_url=f"http://127.0.0.1:{port}/v1", model="default"), bus=rt.bus
        )
        rt.router.set_tiers([LazyLocalTier(rt), oracle])
        task_list = tasks(N_TASKS)
        cascade = run(rt, task_list, None, "cascade")
        direct = run(rt, task_list, ["oracle"], "oracle-only")
        rt.close()

    rows = []
    for name, r in (
        ("cascade local → oracle → human", cascade),
        ("baseline: everything to the oracle", direct),
    ):
        rows.append(
            [
                name,
                N_TASKS,
                f"{r['local']}/{r['oracle']}/{r['yield']}",
                r["C"],
                r["oracle_C"],
                r["priced"],
                f"{r['seconds']:.0f}",
            ]
        )
    ratio_c = cascade["C"] / direct["C"] if direct["C"] else float("nan")
    ratio_priced = cascade["priced"] / direct["priced"] if direct["priced"] else float("nan")
    write_section(
        "bench_escalation",
        "The cascade answers locally what it can and escalates only the rest: share of "
        "requests per tier and total C, against sending everything to the oracle.",
        [
            "route",
            "tasks",
            "answered local/oracle/yielded",
            "total C",
            "oracle C",
            f"C with oracle priced ×{PRICE_RATIO:g}",
            "seconds",
        ],
        rows,
        notes=(
            f"Cascade/oracle-only: total C ratio {ratio_c:.2f}, priced ratio "
            f"{ratio_priced:.2f}. The oracle here is `coreason serve` on the same SmolLM2 "
            "(no bigger model is reachable offline), sampling at T=0.7; every answer is "
            "checked by a validator (arithmetic, SymPy derivative), up to 3 attempts per "
            "tier with the error fed back."
        ),
    )


if __name__ == "__main__":
    main()
