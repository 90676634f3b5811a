"""Pause and abort a request started with ``rt.router.generate`` from a plain script, through
``rt.controls`` from another thread: the pause lands inside the forward pass, the abort leaves
the ledger exact."""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "1"))
PROMPT = "Write a long story about a lighthouse keeper and the storm that changed her life."
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
    "required": ["title", "story"],
}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


class _Probe:
    """Stamps the moment a decode of the workflow parks (published on the decoding thread)."""

    def __init__(self, rt: Any) -> None:
        from coreason_runtime import EventType

        self.parked = threading.Event()
        self.token = threading.Event()
        self.at = 0.0
        rt.bus.subscribe(self._parked, EventType.DECODE_PAUSED)
        rt.bus.subscribe(lambda e: self.token.set(), EventType.TOKENS)

    def _parked(self, event: Any) -> None:
        self.at = time.perf_counter()
        self.parked.set()


def pauses(rt: Any, wf: str, n: int, rng: random.Random, step_s: float) -> list[float]:
    """Pause one long generate ``n`` times at random moments; latencies in ms."""
    from coreason_runtime import WorkflowAbortedError

    probe = _Probe(rt)

    def ask() -> None:
        with contextlib.suppress(WorkflowAbortedError):  # how the long answer is ended
            rt.router.generate(SCHEMA, PROMPT, workflow_id=wf, max_tokens=100_000)

    worker = threading.Thread(target=ask)
    worker.start()
    assert probe.token.wait(120), "the decode never started"
    lat: list[float] = []
    for _ in range(n):
        time.sleep(rng.uniform(0.2, 1.2) * step_s)  # land anywhere inside a token step
        probe.parked.clear()
        t0 = time.perf_counter()
        rt.controls.pause(wf)
        assert probe.parked.wait(30), "the decode did not park"
        lat.append(1000 * (probe.at - t0))
        rt.controls.resume(wf)
    rt.controls.abort(wf)  # end the long answer
    worker.join(60)
    return lat


def aborts(rt: Any, trials: int, rng: random.Random, step_s: float) -> tuple[int, int, float]:
    """Abort ``trials`` requests mid-decode; (exact ledgers, WorkflowAbortedErrors, max ms)."""
    from coreason_runtime import WorkflowAbortedError

    exact = raised = 0
    worst = 0.0
    for i in range(trials):
        wf = f"abort-{i}"
        rt.budgets.set(wf, ceiling=200_000)
        probe = _Probe(rt)
        out: list[Any] = []

        def ask(wf: str = wf, out: list[Any] = out) -> None:
            try:
                out.append(rt.router.generate(SCHEMA, PROMPT, workflow_id=wf, max_tokens=4096))
            except WorkflowAbortedError as e:
                out.append(e)

        worker = threading.Thread(target=ask)
        worker.start()
        assert probe.token.wait(120)
        time.sleep(rng.uniform(0.0, 8.0) * step_s)
        t0 = time.perf_counter()
        rt.controls.abort(wf)
        worker.join(60)
        worst = max(worst, 1000 * (time.perf_counter() - t0))
        err = out[0]
        if isinstance(err, WorkflowAbortedError):
            raised += 1
            ledger = rt.budgets.get(wf)
            charged = sum(a.cost for a in err.attempts)
            if ledger.reserved == 0 and abs(ledger.spent - charged) < 1e-9 and charged > 0:
                exact += 1
    return exact, raised, worst


def main() -> None:
    import torch
    from coreason_runtime import Coordinator, RuntimeConfig

    torch.set_num_threads(THREADS)  # the 2 cores are shared with other jobs
    n = int(os.environ.get("PAUSES", "100"))
    trials = int(os.environ.get("ABORTS", "20"))
    with tempfile.TemporaryDirectory() as home:
        rt = Coordinator(RuntimeConfig(home=Path(home), subgoal_cache=False, oracle=None))
        rt.budgets.set("pause", ceiling=None)
        local = rt.router.tier("local")
        t0 = time.perf_counter()
        warm = local.load().complete_text(  # type: ignore[attr-defined]
            [{"role": "user", "content": "Count."}], 24, ignore_eos=True
        )
        step_s = warm.extra["forward_seconds"] / max(warm.tokens_out - 1, 1)
        rows = []
        for label, checks in (
            ("layer-boundary checks", True),
            ("token boundary only (baseline)", False),
        ):
            rt.decode.layer_checks = checks
            lat = pauses(rt, "pause", n, random.Random(0), step_s)
            rows.append(
                [
                    label,
                    n,
                    round(statistics.median(lat), 2),
                    round(_pct(lat, 0.99), 2),
                    round(max(lat), 2),
                    round(1000 * step_s, 1),
                ]
            )
        rt.decode.layer_checks = True
        exact, raised, worst = aborts(rt, trials, random.Random(1), step_s)
        precision = rt.decode.precision
        rt.close()
    load = os.getloadavg()[0]
    write_section(
        "bench_router_pause",
        "A plain script pauses its own `rt.router.generate` through `rt.controls.pause` from "
        "another thread within 5 ms (p99) on CPU; an abort raises WorkflowAbortedError with "
        "the ledger exact.",
        ["mode", "pauses", "p50 ms", "p99 ms", "max ms", "token step ms"],
        rows,
        notes=(
            f"SmolLM2-135M-Instruct ({precision}, CPU), greedy, grammar on (a JSON object with "
            f"a free "
            f"string), one long answer paused {n} times at random moments 0.2–1.2 token steps "
            f"apart, resumed each time. Latency = `rt.controls.pause(wf)` called until the "
            f"request's decode session publishes `decode.paused` (parked at a layer boundary, "
            f"KV cropped). The baseline turns the layer checks off, so a pause waits for the "
            f"token step to end. Aborts: {trials} requests aborted at a random moment within "
            f"8 token steps: {raised}/{trials} raised WorkflowAbortedError, ledger exact "
            f"(spent = the attempt's charge, nothing reserved) in {exact}/{trials}; slowest "
            f"abort to `generate` returning {worst:.0f} ms. Load average {load:.1f} on 2 "
            f"cores; torch threads {THREADS}; {time.perf_counter() - t0:.0f} s in all."
        ),
    )


if __name__ == "__main__":
    main()
