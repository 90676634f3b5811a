"""Pause latency while decoding: checks at layer boundaries and inside the LM head, against
waiting for the token step to end."""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def measure(
    engine: object, n: int, layer_checks: bool, rng: random.Random
) -> tuple[list[float], float]:
    """Pause a running decode ``n`` times at random moments; latencies in ms and step ms."""
    from coreason_runtime.decode import Sampler

    engine.layer_checks = layer_checks  # type: ignore[attr-defined]
    s = engine.session(
        "Write a long story about a lighthouse keeper.",  # type: ignore[attr-defined]
        max_new_tokens=100_000,
        sampler=Sampler(temperature=0.8, seed=1),
    )
    s.run(max_steps=1)
    t0 = time.perf_counter()
    s.run(max_steps=3)
    step = (time.perf_counter() - t0) / 3
    lat: list[float] = []
    for _ in range(n):
        t = threading.Thread(target=s.run)
        t0 = time.perf_counter()
        t.start()
        time.sleep(rng.uniform(0.2, 1.2) * step)  # land anywhere inside a token step
        lat.append(1000 * s.pause(timeout=30))
        t.join()
        s.resume()
    return lat, 1000 * step


def main() -> None:
    import torch
    from coreason_runtime.decode import DecodeEngine
    from coreason_runtime.models import LayerGate, load_model

    torch.set_num_threads(THREADS)  # the 2 cores are shared with other jobs
    lm = load_model(device="cpu")
    engine = DecodeEngine(lm.model, lm.tokenizer)
    n = int(os.environ.get("PAUSES", "100"))
    rows = []
    for label, checks in (
        ("layer-boundary checks (IDS)", True),
        ("token boundary only (baseline)", False),
    ):
        lat, step = measure(engine, n, checks, random.Random(0))
        rows.append(
            [
                label,
                n,
                round(statistics.median(lat), 2),
                round(_pct(lat, 0.99), 2),
                round(max(lat), 2),
                round(step, 1),
            ]
        )
    engine.close()
    ratio = rows[1][3] / max(rows[0][3], 1e-9)
    write_section(
        "bench_decode_pause",
        "Pausing a decode takes effect inside the forward pass: p99 ≤ 10 ms on CPU, where one "
        "token step is ~60 ms.",
        ["mode", "pauses", "p50 ms", "p99 ms", "max ms", "token step ms"],
        rows,
        notes=(
            f"SmolLM2-135M-Instruct ({engine.precision}, CPU, 30 decoder layers), sampled "
            f"decoding; each "
            f"pause lands at a random moment 0.2–1.2 token steps after the decode thread starts. "
            f"Latency = `pause()` call until the session is parked with its KV cropped to the "
            f"last committed token. IDS checks at every decoder-layer boundary and between the "
            f"LM head's row blocks of {LayerGate.head_rows} rows (`LayerGate`) when it is fp32: "
            f"the head, 49,152 x 576, is the largest single product of this model (~11 ms, four "
            f"layers' worth) and was the p99 before it was split (a precision map's int8 head "
            f"is one short product). p99 ratio baseline / IDS: "
            f"{ratio:.1f}×. Load average while it ran: {os.getloadavg()[0]:.1f} on 2 cores; "
            f"torch threads: {THREADS}."
        ),
    )


if __name__ == "__main__":
    main()
