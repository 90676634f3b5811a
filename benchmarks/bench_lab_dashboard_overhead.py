"""Kernel CPU overhead of the live dashboards during a real decode (claim: < 5 %).

While the decode runs, a feeder thread publishes the events the other mechanisms would (caches,
tasks, budget charges, repairs), so the dashboard really redraws at its 10 updates/s cap.

In a real IPython kernel (jupyter_client, ZMQ), the local SmolLM2 tier decodes a fixed number
of tokens (``ignore_eos``) three ways, interleaved: with nothing subscribed, with the full
dashboard (budget, DAG, cache and decode views behind a 10 updates/s throttle; widget and
plotly updates really serialised and sent on iopub), and with the ``coreason`` comm open (the
side panel's channel). The kernel's process CPU time over each decode is compared.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One torch thread: on a shared, oversubscribed machine OpenMP spin-waiting would dominate the
# kernel's CPU time and drown what is being measured.
THREADS = os.environ.get("BENCH_THREADS", "1")
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from tests.lab._kernel import Kernel  # noqa: E402

TOKENS = int(os.environ.get("BENCH_TOKENS", "64"))
REPS = int(os.environ.get("BENCH_REPS", "5"))
RATE = int(os.environ.get("BENCH_EVENT_RATE", "200"))

SETUP = f"""
import time, json, uuid
from coreason_runtime import Coordinator
%load_ext coreason_lab
rt = Coordinator.default()
_m = get_ipython().magics_manager.registry["CoreasonMagics"]
from coreason_runtime.tensor._local import LocalTier
tier = LocalTier.for_runtime(rt)  # the real local tier, publishing tokens.batch on rt.bus
rt.budgets.set("bench", 10_000_000)
MESSAGES = [{{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}}]
import threading
from coreason_runtime import EventType as E
FEEDER_CPU = {{}}
def feeder(stop):
    # the other mechanisms at work beside the decode: ~{RATE} events/s of caches, tasks,
    # budget charges and repairs, published in every mode so only the subscribers differ
    i = 0
    while not stop.is_set():
        i += 1
        t = f"t{{i % 12}}"
        lookup = {{"key": f"k{{i}}", "kind": "integral"}}
        hit = {{"cross_workflow": False, "admitted_by": "bench", "verifier": "sympy"}}
        task = {{"dag_id": "d", "task": t, "attempt": 1}}
        for kind, data in ((E.CACHE_HIT, {{**lookup, **hit}}) if i % 3 else
                           (E.CACHE_MISS, {{**lookup, "reason": "absent"}}),
                           (E.TASK_STARTED, {{**task, "pid": None, "kind": "solver"}}),
                           (E.TASK_FINISHED, {{**task, "run_s": 0.01}}),
                           (E.BUDGET_CHARGED, {{"tier": "local", "tokens_in": 1, "tokens_out": 1,
                                               "cost": 4, "spent": 4 * i, "ceiling": None,
                                               "released": 4}}),
                           (E.SPAN_REPAIRED, {{"session": "s", "start": 0, "old_end": 2,
                                              "new_end": 3, "old_text": "x^2",
                                              "new_text": "2*x", "decoded_tokens": 1,
                                              "prefilled_tokens": 0, "candidates": 1,
                                              "accepted": True, "reason": None}})):
            rt.bus.emit(kind, workflow_id="bench", source="feeder", **data)
        time.sleep(5 / {RATE})
    FEEDER_CPU["s"] = time.thread_time()  # publishing, and every subscriber's offer()
def decode():
    stop = threading.Event()
    th = threading.Thread(target=feeder, args=(stop,), daemon=True)
    c0, w0, m0 = time.process_time(), time.perf_counter(), time.thread_time()
    th.start()
    out = tier.complete_text(MESSAGES, max_tokens={TOKENS}, ignore_eos=True, workflow_id="bench",
                             timeout=3600)
    main = time.thread_time() - m0  # the decode itself runs on this thread
    stop.set(); th.join()
    cpu = time.process_time() - c0
    return {{"cpu": cpu, "wall": time.perf_counter() - w0, "tokens": out.tokens_out,
             "main": main, "feeder": FEEDER_CPU["s"], "rest": cpu - main - FEEDER_CPU["s"]}}
decode()  # warm-up: first forward passes, allocator
"""


def main() -> None:
    from coreason_runtime._config import model_cache_dir

    cache = os.environ.get("COREASON_MODEL_CACHE") or str(model_cache_dir())
    home = tempfile.mkdtemp(prefix="bench-lab-")
    k = Kernel(
        {
            "COREASON_HOME": home,
            "COREASON_MODEL_CACHE": cache,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": THREADS,
        },
        cwd=str(ROOT),
    )
    samples: dict[str, list[dict[str, float]]] = {"none": [], "dashboard": [], "comm": []}
    try:
        k.run(SETUP, timeout=600)
        for _ in range(REPS):
            for mode in ("none", "dashboard", "comm"):
                if mode == "dashboard":
                    k.run(
                        "dash = _m.handle_dashboard(type('A', (), {'workflow': None, "
                        "'views': None})(), None)\nfrom IPython.display import display\n"
                        "display(dash)"
                    )
                elif mode == "comm":
                    comm_id = k.send_shell(
                        "comm_open",
                        {"comm_id": "bench-comm", "target_name": "coreason", "data": {}},
                    )
                    k.drain_iopub(lambda d: d.get("type") == "hello")
                    del comm_id
                out = k.run(
                    "r = decode()\n"
                    "t = dash.throttle if 'dash' in dir() and not dash.throttle.closed "
                    "else None\n"
                    "r['batches'] = t.delivered_batches if t else 0\n"
                    "print(json.dumps(r))",
                    timeout=600,
                )
                samples[mode].append(json.loads(out.strip().splitlines()[-1]))
                if mode == "dashboard":
                    k.run("dash.close()")
                elif mode == "comm":
                    k.send_shell("comm_close", {"comm_id": "bench-comm", "data": {}})
                    k.run("assert _m.bridge.open_comms == {}")
    finally:
        k.close()

    def med(mode: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[mode])

    def side(mode: str) -> float:  # CPU off the decode thread: publishing, views, iopub
        return statistics.median(s["feeder"] + s["rest"] for s in samples[mode])

    base, base_main = med("none", "cpu"), med("none", "main")
    rows = []
    for mode, label in (
        ("none", "nothing subscribed"),
        ("dashboard", "dashboard, 4 views, ≤ 10 updates/s"),
        ("comm", "`coreason` comm open (side panel)"),
    ):
        cpu, wall = med(mode, "cpu"), med(mode, "wall")
        tok = samples[mode][0]["tokens"]
        rate = (
            statistics.median(s["batches"] / s["wall"] for s in samples[mode])
            if mode == "dashboard"
            else None
        )
        spread = [s["cpu"] for s in samples[mode]]
        direct = side(mode) - side("none")
        rows.append(
            [
                label,
                f"{cpu:.2f} ({min(spread):.2f}–{max(spread):.2f})",
                f"{med(mode, 'main'):.2f}",
                f"{side(mode):.3f}",
                f"{tok / wall:.1f}",
                "—" if rate is None else f"{rate:.1f}",
                "baseline" if mode == "none" else f"{100 * direct / base_main:+.1f} %",
                "—" if mode == "none" else f"{1000 * direct / wall:.0f}",
                "baseline" if mode == "none" else f"{100 * (cpu - base) / base:+.1f} %",
            ]
        )
    write_section(
        "bench_lab_dashboard_overhead",
        "The live dashboards cost the kernel < 5 % extra CPU during a decode.",
        [
            "subscribers",
            "kernel CPU s, median (range)",
            "decode thread CPU s",
            "CPU off the decode thread s",
            "tokens/s",
            "view updates/s",
            "overhead: extra CPU off the decode thread ÷ decode CPU",
            "extra CPU ms per s",
            "whole-process CPU vs baseline (noisy)",
        ],
        rows,
        notes=(
            f"Scale: SmolLM2-135M-Instruct (fp32, CPU, {THREADS} torch thread), {TOKENS} "
            "tokens per decode with "
            f"`ignore_eos`, while a feeder thread publishes ~{RATE} events/s (cache hits and "
            "misses, task starts and finishes, budget charges, span repairs) in every row, so "
            "the views are driven at their 10 updates/s cap; "
            f"{REPS} interleaved repetitions per row, medians. Kernel CPU = "
            "`time.process_time()` of the kernel process (all its threads: torch, runtime, "
            "throttle, iopub) over the decode; the decode thread's own CPU is its "
            "`time.thread_time()`, and everything else (the feeder's publishing with every "
            "subscriber's `offer`, the throttle and view threads, iopub) is 'off the decode "
            "thread'. The overhead column is the rise of that off-thread CPU over the "
            "baseline, as a share of the decode's CPU: the cost the views add. The last "
            "column compares whole-process CPU, which on this shared VM swings by ±10 % "
            "between identical runs (see the ranges), more than the effect measured. No "
            "browser renders the widgets, but every update is serialised and sent on iopub "
            "exactly as with one. 'Extra CPU ms per s' is the absolute cost, which does not "
            "shrink with a faster decode. What keeps it low: plots redraw "
            "≤ 1/s while tables and text follow every batch, the decode view escapes only "
            "new spans, the status line is resent on a state change or ≤ 1/s, ledgers are "
            "read ≤ 2/s; the comm serialises a batch once and walks it for secrets only "
            "when its text could hold one. Load average when it finished: "
            f"{os.getloadavg()[0]:.1f} on 2 cores; a difference of a percent or two is "
            "within noise."
        ),
    )
    print(json.dumps(samples, indent=1))


if __name__ == "__main__":
    main()
