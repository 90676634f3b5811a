"""kill -9 at random points of a request, 100 trials per victim: the Coordinator, a notebook
kernel, `coreason serve`, a tool's heavy run. Counted after each: ledger discrepancies,
orphans, failed restarts, audit records that disagree with what happened (all must be 0)."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault(
    "COREASON_MODEL_CACHE",
    str(Path(os.environ.get("COREASON_HOME", "~/.coreason")).expanduser() / "models"),
)

from benchmarks._report import write_section  # noqa: E402
from tests._fixtures import faults  # noqa: E402


def trials_of(victim: str) -> int:
    """``FAULT_TRIALS_<VICTIM>`` or ``FAULT_TRIALS`` (default 100)."""
    return int(
        os.environ.get(f"FAULT_TRIALS_{victim.upper()}", os.environ.get("FAULT_TRIALS", "100"))
    )


def run(victim: str, trial: Callable[[Path, random.Random], faults.Trial]) -> list[object]:
    n = trials_of(victim)
    rng = random.Random(f"faults-{victim}")
    done: list[faults.Trial] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for _ in range(n):
            done.append(trial(Path(work), rng))
    s = faults.summary(done)
    return [
        victim,
        s["trials"],
        s["discrepancies"],
        s["orphans"],
        s["not_recovered"],
        s["audit_false"],
        round((time.perf_counter() - t0) / max(n, 1), 1),
    ]


class _ServeChain:
    """Serve trials in a row: each restarted server is the next trial's victim."""

    def __init__(self) -> None:
        from tests._fixtures.serve import ServeProcess, tiny_model_folder

        self.model = str(tiny_model_folder())
        self.server: ServeProcess | None = None

    def __call__(self, work: Path, rng: random.Random) -> faults.Trial:
        trial, self.server = faults.kill_serve(work, rng, self.model, self.server)
        return trial

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def main() -> None:
    t0 = time.perf_counter()
    chain = _ServeChain()
    try:
        rows = [
            run("coordinator", faults.kill_coordinator),
            run("tool run", faults.kill_tool_run),
            run("kernel", faults.kill_kernel),
            run("serve", chain),
        ]
    finally:
        chain.stop()
    load = os.getloadavg()[0]
    clean = all(r[2] == r[3] == r[4] == r[5] == 0 for r in rows)
    goal = f"Goal (every count 0): {'met' if clean else 'MISSED'}."
    write_section(
        "bench_hardening_faults",
        "A kill -9 at a random point of a request leaves the ledger exact (spent = Σ charges, "
        "nothing reserved, Ω kept, no reservation charged twice), nothing orphaned, a next "
        "start that recovers and serves, and an audit log that tells what happened.",
        [
            "victim",
            "trials",
            "ledger discrepancies",
            "orphans",
            "not recovered",
            "audit false",
            "s / trial",
        ],
        rows,
        notes=(
            "Coordinator: a script whose tier charges a token per ms, killed 0–1.5 s in; a "
            "new Coordinator recovers its reservation at the last checkpoint. Tool run: "
            "`sh -c 'sleep 30 & wait'` in a two-phase commit, its gate shell killed 0–0.3 s "
            "in; the commit raises ToolRunError, the audit log says failed, the process group "
            "is gone, a restart finds nothing open. Kernel: a real IPython kernel killed "
            "0–0.8 s into `%%coreason ask`. Serve: `coreason serve` (tiny model) killed "
            "0.05–1 s into a streamed oracle request; the client gets a typed error, its "
            "ledger is exact, the restarted server is healthy (and is the next victim). "
            f"{goal} Load average {load:.1f} on 2 cores; "
            f"{time.perf_counter() - t0:.0f} s in all. "
            "`FAULT_TRIALS_<VICTIM>` sets a victim's count."
        ),
    )


if __name__ == "__main__":
    main()
