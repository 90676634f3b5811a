"""Exact replay: re-running the executed tour answers every request from the notebook's record:
tokens spent (goal 0), identical answers, and wall time against the first run and against a
re-run that decodes again (`coreason-lab demo --no-replay`)."""

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

TOUR = ROOT / "notebooks" / "00_tour.ipynb"


def _ledgers(home: Path) -> tuple[int, int, float]:
    from coreason_runtime import Coordinator, RuntimeConfig

    with Coordinator(RuntimeConfig(home=home, oracle=None)) as rt:
        ledgers = rt.budgets.workflows()
    return (
        sum(led.tokens_in for led in ledgers),
        sum(led.tokens_out for led in ledgers),
        sum(led.spent for led in ledgers),
    )


def _answers(executed: Path) -> list[Any]:
    """The value and tier of every ask cell's result (from its output metadata)."""
    nb = json.loads(executed.read_text())
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("coreason")
            if meta:
                text = o["data"].get("text/plain", "")
                text = "".join(text) if isinstance(text, list) else text
                out.append((meta.get("tier"), text.split("value=", 1)[-1]))  # not its cost
    return out


def _run(home: Path, out: Path, *, replay: bool) -> tuple[float, tuple[int, int, float], Any]:
    from coreason_lab.demo import run_notebook

    os.environ["COREASON_HOME"] = str(home)
    before = _ledgers(home)
    t0 = time.perf_counter()
    executed, _ = run_notebook(TOUR, out, replay=replay)
    wall = time.perf_counter() - t0
    after = _ledgers(home)
    spent = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
    return wall, spent, _answers(executed)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime" / "src"), str(ROOT)])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        first = _run(home, Path(tmp) / "first", replay=True)
        again = _run(home, Path(tmp) / "again", replay=True)
        decode = _run(home, Path(tmp) / "decode", replay=False)
    same = again[2] == first[2] and len(first[2]) > 0
    rows = [
        [label, round(wall, 1), spent[0], spent[1], round(spent[2], 1), round(wall / first[0], 2)]
        for label, (wall, spent, _) in (
            ("first run (records)", first),
            ("re-run, replayed", again),
            ("re-run with --no-replay (decodes again)", decode),
        )
    ]
    load = os.getloadavg()[0]
    met = same and again[1][0] == again[1][1] == 0 and again[0] < first[0]
    goal = f"Goal (0 tokens, same answers, less wall time): {'met' if met else 'MISSED'}."
    write_section(
        "bench_lab_replay",
        "Re-running the executed tour answers every request from the notebook's replay record: "
        "0 tokens spent, the same answers, in less wall time than the first run.",
        ["run", "wall s", "tokens in", "tokens out", "C spent", "wall / first run"],
        rows,
        notes=(
            f"`notebooks/00_tour.ipynb` run three times by `coreason-lab demo`'s runner in "
            f"fresh kernels sharing one `$COREASON_HOME` (SmolLM2-135M-Instruct, fp32, CPU, one "
            f"torch thread): first run, re-run (the kernel names the notebook, so its record "
            f"answers), re-run with replay off. Tokens and C are the ledgers' increase during "
            f"each run. Answers identical to the first run's (value and tier of every ask "
            f"cell, {len(first[2])} of them): {'yes' if same else 'NO'}. Wall time includes "
            f"starting the kernel; a replayed run still loads nothing but the model's manifest "
            f"for the key. {goal} Load average {load:.1f} on 2 cores; "
            f"{time.perf_counter() - t0:.0f} s in all."
        ),
    )


if __name__ == "__main__":
    main()
