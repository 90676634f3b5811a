"""Where a decode step's time goes (forward, layer gate, grammar mask, sampling, Python), before
and after the lean loop, in one run: the tree before issue 19 and this one, same prompts.

"Before" is a checkout of ``--before`` (a git revision, default the commit before the precision
work) measured in a child process with that tree first on its path; "after" is this tree, in
fp32 and with the validated precision map. The layer gate's cost is a step with layer checks on
minus one with them off; Python is what remains of the step after forward, mask and sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

BEFORE = "181957f"
PROMPT = "List the steps to differentiate x**3 * sin(x), one short step per item."


def measure(precision: str, n: int, threads: int) -> dict[str, float]:
    """ms per token of each part, for this process's coreason_runtime."""
    import llguidance
    import torch
    from coreason_runtime.decode import DecodeEngine
    from coreason_runtime.models import load_model

    torch.set_num_threads(threads)
    try:
        lm = load_model(device="cpu", precision=precision)  # type: ignore[call-arg]
    except TypeError:  # the tree before maps existed loads fp32 only
        lm = load_model(device="cpu")
    engine = DecodeEngine(lm.model, lm.tokenizer)
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "string"}, "minItems": n}},
        "required": ["items"],
    }
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    out: dict[str, float] = {}
    for checks in (False, True):
        engine.layer_checks = checks
        engine.generate(PROMPT, max_new_tokens=4, grammar=engine.new_mask(grammar))
        s = engine.session(PROMPT, max_new_tokens=n, grammar=engine.new_mask(grammar))
        t0 = time.perf_counter()
        s.run()
        total = time.perf_counter() - t0 - s.timings.prefill
        k = s.n_generated
        tm = s.timings
        sample = getattr(tm, "sample", 0.0)
        part = {
            "total": 1000 * total / k,
            "forward": 1000 * tm.forward / k,
            "mask": 1000 * tm.mask / k,
            "sample": 1000 * sample / k,
        }
        part["python"] = part["total"] - part["forward"] - part["mask"] - part["sample"]
        out.update({f"{key}_{'on' if checks else 'off'}": v for key, v in part.items()})
    engine.close()
    return out


def _child(tree: Path, precision: str, n: int, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'runtime' / 'src'}:{tree}"}
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_decode_overhead.py"),
        "--child",
        precision,
        "--tokens",
        str(n),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=3600)
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.tokens, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="coreason-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
            check=True,
            capture_output=True,
        )
        try:
            runs = {
                f"before ({args.before}), fp32": _child(before, "fp32", args.tokens, args.threads),
                "after, fp32": _child(ROOT, "fp32", args.tokens, args.threads),
                "after, POPB map": _child(ROOT, "auto", args.tokens, args.threads),
            }
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                check=False,
                capture_output=True,
            )
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, dict[str, float]]) -> None:
    rows: list[list[object]] = []
    for label, r in runs.items():
        gate = r["forward_on"] - r["forward_off"]
        rows.append(
            [
                label,
                round(r["total_on"], 2),
                round(r["forward_off"], 2),
                round(gate, 2),
                round(r["mask_on"], 3),
                round(r["sample_on"], 3) if r["sample_on"] else "(in Python)",
                round(r["python_on"], 3),
                round(1000 / r["total_on"], 1),
            ]
        )
    base = next(iter(runs.values()))["total_on"]
    last = list(runs.values())[-1]["total_on"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    notes = (
        f"{args.tokens} tokens under a JSON schema that cannot close early, greedy, "
        f"{args.threads} thread(s), layer checks on (as the runtime decodes); 'gate' is the "
        "forward time with checks on minus off (it moves with the machine's load, and can come "
        "out negative within noise). Mask: the part of the grammar mask the step waits for "
        "(after: the rest overlaps the forward pass on a helper thread). Step time "
        f"{base:.1f} -> {last:.1f} ms ({base / last:.2f}x). Load average: {load}."
    )
    md = write_section(
        "bench_decode_overhead",
        "The per-token breakdown of the one decode loop, before and after the lean loop and the "
        "precision map, in one run.",
        [
            "tree / model",
            "ms/token",
            "forward ms",
            "gate ms",
            "mask ms",
            "sampling ms",
            "Python ms",
            "tok/s",
        ],
        rows,
        notes=notes,
    )
    print(md)


if __name__ == "__main__":
    main()
