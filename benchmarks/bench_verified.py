"""Claim: verifiers steer compute. Repairing only the broken span fixes a rejected answer with
far fewer decoded tokens than retrying the whole request, and the cascade (local model, span
repair, CAS tier) answers the task set verified at a fraction of the oracle-only route's C.

Task set: ``benchmarks/verified_tasks.py`` — 100 problems (derivatives, antiderivatives,
roots, eigenvalues, limits, physics with units), each with a verifier built from the problem
statement (SymPy, pint; no stored answer). Same model (SmolLM2-135M-Instruct, CPU), same
seeds, one run, every route on every task:

- ``none``: no verification (the answer as decoded; its correctness audited afterwards);
- ``full retry``: verification, a rejected answer retried whole (same sampler, same 3
  attempts per tier, the failures fed back), no span repair;
- ``span, local``: span repair with local candidates only (K=4 on a temperature ladder),
  then whole retries;
- ``span + CAS``: the cascade — local candidates, then the CAS tier for the field;
- ``oracle only``: every request to the oracle, verified after the fact (whole-answer retry
  and a field question to the oracle). Offline there is no bigger model: the oracle is
  ``coreason serve`` on the same SmolLM2 sampling at T=0.7 (as in bench_escalation).

"Wrong but verified" is audited independently: the answer is evaluated numerically against
SymPy's own result (pint for quantities), not by the verifier that passed it.

Run: ``.venv/bin/python benchmarks/bench_verified.py`` (``VERIFIED_TASKS=n`` for a subset,
taken in turn from each kind).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._servers import serve_subprocess  # noqa: E402
from benchmarks.verified_tasks import TASKS, Task  # noqa: E402

N_TASKS = int(os.environ.get("VERIFIED_TASKS", str(len(TASKS))))
MAX_TOKENS = 48
ROUTES = ("none", "full retry", "span, local", "span + CAS", "oracle only")


def audit(task: Task, value: Any) -> bool:
    """An independent check: numeric agreement with SymPy's / pint's own answer."""
    import sympy
    from coreason_runtime.cache._verify import numeric_equal
    from coreason_runtime.verify._math import read_expr, read_list

    name, args = task.verifier
    x = sympy.Symbol("x")
    got = getattr(value, args["result"])
    try:
        if name == "derivative":
            return numeric_equal(sympy.diff(sympy.sympify(args["of"]), x), read_expr(got))
        if name == "antiderivative":
            return numeric_equal(sympy.diff(read_expr(got), x), sympy.sympify(args["of"]))
        if name == "limit":
            want = sympy.limit(sympy.sympify(args["of"]), x, sympy.sympify(args["at"]))
            have = read_expr(got)
            return bool(want == have) if want.is_infinite else abs(complex(want - have)) < 1e-9
        if name in ("roots", "eigenvalues"):
            if name == "roots":
                want = sympy.solve(sympy.sympify(args["of"]), x)
            else:
                want = list(sympy.Matrix(args["matrix"]).eigenvals())
            have = sorted({round(float(v), 9) for v in read_list(got)})
            return have == sorted({round(float(w), 9) for w in want})
        from coreason_runtime.verify._units import _quantity, registry

        want_q = registry().parse_expression(args["equals"])
        have_q = _quantity(got, args["unit"])
        return abs(have_q.to(want_q.units).magnitude - want_q.magnitude) <= 1e-3 * abs(
            want_q.magnitude
        )
    except (ValueError, TypeError, ArithmeticError, AttributeError):
        return False


def subset(n: int) -> list[Task]:
    """``n`` tasks spread over the kinds (the set is ordered by kind): each kind's first task,
    then each kind's second, and so on."""
    kinds: dict[str, list[Task]] = {}
    for task in TASKS:
        kinds.setdefault(task.kind, []).append(task)
    rounds = max(len(ts) for ts in kinds.values())
    spread = [ts[i] for i in range(rounds) for ts in kinds.values() if i < len(ts)]
    return spread[:n]


def route_options(route: str, task: Task) -> dict[str, Any]:
    from coreason_runtime import verifiers as V

    check = task.check()
    return {
        "none": {"tiers": ["local"]},
        "full retry": {
            "tiers": ["local"],
            "verify": V.policy(check, repair=False, span_tiers=()),
        },
        "span, local": {"tiers": ["local"], "verify": V.policy(check, span_tiers=())},
        "span + CAS": {"tiers": ["local"], "verify": V.policy(check, span_tiers=("cas",))},
        "oracle only": {"tiers": ["oracle"], "verify": V.policy(check, span_tiers=("oracle",))},
    }[route]


def run_task(rt: Any, route: str, task: Task, wf: str) -> dict[str, Any]:
    from coreason_runtime import EpistemicYieldError

    spent = rt.budgets.spent(wf)
    started = time.perf_counter()
    try:
        res = rt.router.generate(
            task.schema,
            task.prompt,
            workflow_id=wf,
            max_tokens=MAX_TOKENS,
            seed=0,
            cache=False,
            **route_options(route, task),
        )
        attempts, repairs, value, verified = res.attempts, res.repairs, res.value, res.verified
    except EpistemicYieldError as e:
        attempts, repairs, value, verified = e.attempts, [], None, False
    remote = sum(r.tokens_out for r in repairs if r.tier not in ("local", "cas"))
    return {
        "verified": verified,
        "correct": value is not None and audit(task, value),
        "tokens_out": sum(a.tokens_out for a in attempts) + remote,
        "first_tokens": attempts[0].tokens_out if attempts else 0,
        "attempts": len(attempts),
        "C": rt.budgets.spent(wf) - spent,
        "seconds": time.perf_counter() - started,
        "repairs": [(r.tier, r.accepted, r.tokens_out) for r in repairs],
        "answer": None if value is None else value.model_dump(),
    }


def summarise(route: str, rows: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[Any]:
    n = len(rows)
    verified = sum(r["verified"] for r in rows)
    wrong_verified = sum(r["verified"] and not r["correct"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    tokens = sum(r["tokens_out"] for r in rows)
    cost = sum(r["C"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    # a fix: the first answer was rejected (wrong for the audit) and the request ended verified
    fixes = [i for i, r in enumerate(rows) if r["verified"] and not base[i]["correct"]]
    if route == "oracle only":
        fix_tokens = sum(r["tokens_out"] - r["first_tokens"] for r in rows)
    else:  # every local route starts with the same greedy decode as route "none"
        fix_tokens = sum(r["tokens_out"] - base[i]["tokens_out"] for i, r in enumerate(rows))
    local_fixes = sum(any(t == "local" and ok for t, ok, _ in r["repairs"]) for r in rows)
    cas_fixes = sum(any(t == "cas" and ok for t, ok, _ in r["repairs"]) for r in rows)
    return [
        route,
        n,
        f"{verified / n:.0%}",
        wrong_verified,
        f"{correct / n:.0%}",
        tokens,
        f"{len(fixes)} ({local_fixes} local span, {cas_fixes} CAS)",
        f"{fix_tokens / len(fixes):.1f}" if fixes else "no fix",
        round(cost),
        f"{cost / verified:.0f}" if verified else "∞",
        f"{seconds / verified:.1f}" if verified else "∞",
    ]


def lazy_usage(rt: Any, tasks: list[Task]) -> tuple[int, int]:
    """How often the model writes a ⟦name(args)⟧ placeholder where a lazy field allows one."""
    from pydantic import BaseModel, Field

    class Lazy(BaseModel):
        answer: str = Field(max_length=40, json_schema_extra={"lazy": True})

    hint = " If you cannot compute it now, you may write ⟦name(args)⟧ to defer it."
    used = 0
    for i, task in enumerate(tasks):
        res = rt.router.generate(
            Lazy, task.prompt + hint, workflow_id="lazy", tiers=["local"],
            max_tokens=MAX_TOKENS, seed=0, cache=False,
        )  # fmt: skip
        used += bool(res.thunks)
        print(f"lazy {i}: {res.value.answer!r}", flush=True)
    return used, len(tasks)


def main() -> None:
    from coreason_runtime import Coordinator, OracleConfig, RuntimeConfig
    from coreason_runtime.tensor import RemoteTier
    from coreason_runtime.tensor._wiring import LazyLocalTier

    tasks = subset(N_TASKS)
    home = Path(tempfile.mkdtemp(prefix="bench-verified-"))
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in ROUTES}
    with serve_subprocess(home) as port:
        rt = Coordinator(RuntimeConfig(home=home, oracle=None, subgoal_cache=False))

        class SamplingOracle(RemoteTier):
            def complete(self, request, meter):  # type: ignore[no-untyped-def]
                request.temperature = 0.7
                return super().complete(request, meter)

        oracle = SamplingOracle(
            OracleConfig(base_url=f"http://127.0.0.1:{port}/v1", model="default"),
            bus=rt.bus,
        )
        rt.router.set_tiers([LazyLocalTier(rt), oracle])
        for route in ROUTES:
            wf = route.replace(" ", "-").replace(",", "").replace("+", "and")
            rt.budgets.set(wf, ceiling=None)
            for i, task in enumerate(tasks):
                row = run_task(rt, route, task, wf)
                results[route].append(row)
                print(f"{route} {i} {task.kind}: verified={row['verified']} "
                      f"correct={row['correct']} tokens={row['tokens_out']} C={row['C']:.0f} "
                      f"{row['seconds']:.1f}s {row['answer']}", flush=True)  # fmt: skip
        rt.budgets.set("lazy", ceiling=None)
        used, asked = lazy_usage(rt, tasks)
        rt.close()
    (home / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report(results, used, asked, home)


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None where it means nothing (no fix on a side, nothing spent)."""
    if b == 0 or a == float("inf") or b == float("inf"):
        return None
    return a / b


def _show(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def report(
    results: dict[str, list[dict[str, Any]]],
    used: int,
    asked: int,
    home: Path,
    load: str | None = None,
) -> None:
    base = results["none"]
    rows = [summarise(route, results[route], base) for route in ROUTES]
    by = {r[0]: r for r in rows}

    def per_fix(route: str) -> float:
        text = by[route][7]
        return float(text) if text != "no fix" else float("inf")

    cascade_c, oracle_c = by["span + CAS"][8], by["oracle only"][8]
    retry_fix, span_fix = per_fix("full retry"), per_fix("span, local")
    cascade_fix = per_fix("span + CAS")
    load = load or ", ".join(f"{x:.2f}" for x in os.getloadavg())
    verified_pct = float(by["span + CAS"][2].rstrip("%"))
    span_ratio, cas_ratio = _ratio(retry_fix, span_fix), _ratio(retry_fix, cascade_fix)
    c_ratio = _ratio(cascade_c, oracle_c)
    goals: dict[str, bool | None] = {
        "≥3× fewer tokens per fix": None if span_ratio is None else span_ratio >= 3,
        "cascade ≤⅓ oracle C": None if c_ratio is None else c_ratio <= 1 / 3,
        "≥95% verified": verified_pct >= 95,
        "no wrong verified": by["span + CAS"][3] == 0,
    }
    said = {True: "met", False: "MISSED", None: "not measured"}
    verdict = "; ".join(f"{k}: {said[ok]}" for k, ok in goals.items())
    if by["oracle only"][5] == 0:
        verdict += (
            " (the oracle route decoded nothing: every oracle request failed at once, so "
            "its C is 0 and the cascade/oracle ratio means nothing)"
        )
    if span_ratio is None:
        verdict += (
            f" (≥3×: neither local route fixed a task — whole retries decoded "
            f"{by['full retry'][5]} tokens, span candidates {by['span, local'][5]}, for 0 "
            "fixes — so there is no tokens-per-fix to "
            "compare; what bounds it is the model: SmolLM2-135M does not produce these values "
            "at any temperature on the ladder, and only a tier that can compute the field "
            "(the CAS) or a stronger oracle fixes them)"
        )
    notes = (
        f"Tokens per fix, full retry / span repair (local candidates): "
        f"{retry_fix:.1f} / {span_fix:.1f} = {_show(span_ratio, '.2f')}× "
        f"(goal ≥ 3×; with the CAS tier {_show(cas_ratio, '.2f')}×). "
        f"Cascade C / oracle-only C: {_show(c_ratio, '.2f')} (goal ≤ 0.33), cascade verified "
        f"accuracy {by['span + CAS'][2]} (goal ≥ 95%). A fix is a task whose first answer the "
        "audit finds wrong and that ends verified; its tokens are everything decoded after the "
        "first answer (span candidates, whole retries, field questions; the CAS decodes none — "
        "its C is its CPU time at 1 C per 10 ms). The CAS can compute every task in this set "
        "(each verifier can produce its field), so the cascade's accuracy is the CAS's; what the "
        "run measures is how much each route pays to get there. Lazy fields: the model wrote a "
        f"⟦name(args)⟧ placeholder in {used} of {asked} answers when the schema allowed one and "
        f"the prompt said so. Tasks: {len(base)} of {len(TASKS)} (VERIFIED_TASKS={len(base)}, "
        "taken in turn from each kind). "
        f"Goals — {verdict}. Load average during the run: {load}. Raw rows: "
        f"{home / 'results.json'}."
    )
    write_section(
        "bench_verified",
        "Verifiers steer compute: span repair fixes a rejected answer with ≥3× fewer decoded "
        "tokens than a whole retry, and the cascade (local, span repair, CAS) answers ≥95% of "
        "the task set verified at ≤⅓ of the oracle-only route's C, with no wrong answer "
        "returned as verified.",
        [
            "route",
            "tasks",
            "verified",
            "wrong but verified",
            "correct (audit)",
            "tokens decoded",
            "fixes",
            "tokens per fix",
            "C",
            "C per verified answer",
            "s per verified answer",
        ],
        rows,
        notes=notes,
    )


if __name__ == "__main__":
    main()
