"""Streaming answers: how much sooner a reader sees the answer's first value than the whole
answer, through `rt.router.stream` (what `%%coreason ask` draws) on the real model."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

QUESTIONS = [
    "What is the derivative of x**3 with respect to x?",
    "What is the derivative of sin(x) with respect to x?",
    "What is the derivative of exp(2*x) with respect to x?",
    "What is the derivative of log(x) with respect to x?",
    "What is the derivative of x**2 + 3*x with respect to x?",
    "What is the derivative of cos(x)**2 with respect to x?",
    "What is the derivative of 1/x with respect to x?",
    "What is the derivative of sqrt(x) with respect to x?",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "function": {"type": "string", "maxLength": 40},
        "derivative": {"type": "string", "maxLength": 40},
        "explanation": {"type": "string", "maxLength": 300},
    },
    "required": ["function", "derivative", "explanation"],
}


def main() -> None:
    import torch
    from coreason_runtime import Coordinator, RuntimeConfig

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    first, full, partials, tokens = [], [], [], []
    with tempfile.TemporaryDirectory() as home:
        rt = Coordinator(RuntimeConfig(home=Path(home), subgoal_cache=False, oracle=None))
        rt.budgets.set("stream", ceiling=None)
        rt.router.generate(SCHEMA, "Warm up.", workflow_id="stream", max_tokens=8)
        for q in QUESTIONS:
            start = time.perf_counter()
            seen = None
            count = 0
            stream = rt.router.stream(SCHEMA, q, workflow_id="stream", max_tokens=160)
            for p in stream:
                if seen is None:
                    seen = time.perf_counter() - start
                count += not p.final
            assert stream.result is not None and seen is not None
            full.append(time.perf_counter() - start)
            first.append(seen)
            partials.append(count)
            tokens.append(stream.result.tokens_out)
        rt.close()
    ratio = [f / w for f, w in zip(first, full, strict=True)]
    load = os.getloadavg()[0]
    write_section(
        "bench_lab_streaming",
        "A streamed ask shows its first value (the first parseable field) well before the whole "
        "answer: time to first visible partial value vs time to the validated answer.",
        ["requests", "first value p50 s", "full answer p50 s", "first / full (p50)", "partials"],
        [
            [
                len(QUESTIONS),
                round(statistics.median(first), 2),
                round(statistics.median(full), 2),
                round(statistics.median(ratio), 3),
                round(statistics.mean(partials), 1),
            ]
        ],
        notes=(
            f"SmolLM2-135M-Instruct (fp32, CPU, one torch thread), greedy, grammar on: a "
            f"three-field object (function, derivative, explanation ≤ 300 characters), "
            f"max_tokens 160, {len(QUESTIONS)} derivative questions, subgoal cache and replay "
            f"off. Time from calling `rt.router.stream(...)` to the first `Partial` (the local "
            f"tier publishes `tokens.batch` every 8 tokens; a partial is yielded when the text so "
            f"far parses to a non-empty value) and to the final, validated one; mean "
            f"{statistics.mean(tokens):.0f} output tokens per answer. Partials = values yielded "
            f"before the final one (the cell redraws at most 10 times a second). Load average "
            f"{load:.1f} on 2 cores; {time.perf_counter() - t0:.0f} s in all."
        ),
    )


if __name__ == "__main__":
    main()
