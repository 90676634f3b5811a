"""Claim: budget leases never overshoot Ω, use it (≥ 95%), and refuse no request whose real
cost would have fit — under 16 threads and under 4 processes, on SQLite and on Redis.

Workload: 16 threads × 50 requests (and 4 processes × 50), each with a prompt of 20–80 tokens
and a real answer of 8–120 tokens, asking for up to 256 (so its worst case is ~10× its real
cost, as with a router's max_tokens). Ω is half of the workload's real cost. Each request runs
like a tier: the prompt charged, then per token ``check`` → one decode step (5 ms) →
``charge``, then ``settle``. Schemes, in the same run, on the same store:

- leases: ``BudgetCage(lease_tokens=16, lease_wait=30)`` (the default);
- reservation: today's scheme before leases, ``BudgetCage(lease_tokens=None, lease_wait=0)``:
  the worst case reserved up front (clipped to what is left), refused at once;
- naive check-then-charge: each token checks the settled spend, the charge lands at the end.

Per run: overshoot (spent − Ω, must be 0), share of Ω used when the last request ended (goal
≥ 95%), and requests refused while their real cost would have fit (goal 0), counted two ways:
*then* — refused (at the start or cut mid-way) although its remaining cost fitted at that
moment, had every request in flight held only what it really consumed; *at the end* — the
refused requests whose remaining costs fit, smallest first, in what was left of Ω at the end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coreason_runtime import BudgetExceededError  # noqa: E402
from coreason_runtime.budget import (  # noqa: E402
    BudgetCage,
    Charge,
    LedgerBackend,
    RedisLedgerBackend,
    ReservationRecord,
    SQLiteLedgerBackend,
)

THREADS, PER_THREAD = 16, 50
PROCS, PER_PROC = 4, 50
MAX_TOKENS = 256
TOKEN_S = 0.005
WF = "bench"
SCHEMES = ("leases", "reservation", "naive check-then-charge")


def workload(n: int, seed: int = 20) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(20, 80), rng.randint(8, 120)) for _ in range(n)]


def cost(t_in: int, t_out: int) -> float:
    return t_in + 3.0 * t_out


# --- the naive baseline: check the settled spend, charge at the end ------------------------


@dataclass
class NaiveMeter:
    backend: LedgerBackend
    ceiling: float
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def consumed(self) -> float:
        return cost(self.tokens_in, self.tokens_out)

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        ledger = self.backend.get(WF)
        spent = ledger.spent if ledger is not None else 0.0
        if spent + self.consumed + cost(tokens_in, tokens_out) > self.ceiling:
            msg = "naive: the ceiling would be crossed"
            raise BudgetExceededError(msg)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def settle(self) -> None:
        rid = uuid.uuid4().hex
        record = ReservationRecord(reservation_id=rid, workflow_id=WF, tier="bench", granted=0)
        charge = Charge(
            workflow_id=WF,
            tier="bench",
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost=self.consumed,
            ts=time.time(),
            reservation_id=rid,
        )
        self.backend.settle(record, charge)


class Scheme:
    """Opens a meter per request under one of the three schemes."""

    def __init__(self, name: str, backend: LedgerBackend) -> None:
        self.name = name
        self.backend = backend
        self.cage = (
            BudgetCage(backend, lease_tokens=None, lease_wait=0)
            if name == "reservation"
            else BudgetCage(backend)
        )

    def open(self, t_in: int) -> Any:
        if self.name == "naive check-then-charge":
            ledger = self.backend.get(WF)
            assert ledger is not None and ledger.ceiling is not None
            meter = NaiveMeter(self.backend, ledger.ceiling)
            meter.check(tokens_in=t_in, tokens_out=1)
            return meter
        return self.cage.open(WF, t_in, MAX_TOKENS, "bench")


Outcome = tuple[str, float, float, float, float]  # kind, C charged, C still needed, t0, t1


def run_request(scheme: Scheme, t_in: int, t_out: int) -> Outcome:
    """("ok" | "cut" | "refused", C charged, C it still needed, started, ended)."""
    t0 = time.time()
    try:
        meter = scheme.open(t_in)
    except BudgetExceededError:
        return "refused", 0.0, cost(t_in, t_out), t0, time.time()
    try:
        meter.check(tokens_in=t_in)
        meter.charge(tokens_in=t_in)
        for _ in range(t_out):
            meter.check(tokens_out=1)
            time.sleep(TOKEN_S)  # the decode step the token costs
            meter.charge(tokens_out=1)
        kind, need = "ok", 0.0
    except BudgetExceededError:
        kind, need = "cut", cost(t_in, t_out) - meter.consumed
    meter.settle()
    return kind, meter.consumed, need, t0, time.time()


def refused_while_fitting(ceiling: float, outcomes: list[Outcome]) -> int:
    """Refusals (at the start or mid-way) whose remaining cost fitted at that moment, had every
    request in flight held only what it really consumed (its final charge)."""
    count = 0
    for kind, _, need, _, at in outcomes:
        if kind == "ok":
            continue
        held = sum(c for _, c, _, t0, _ in outcomes if t0 <= at)
        if need <= ceiling - held - 1e-9:  # `held` has this request's own charge in it
            count += 1
    return count


def refused_fitting_at_the_end(left: float, outcomes: list[Outcome]) -> int:
    """Refusals whose remaining costs fit, smallest first, in what is left of Ω at the end."""
    fit = 0
    for need in sorted(o[2] for o in outcomes if o[0] != "ok"):
        if need > left:
            break
        left -= need
        fit += 1
    return fit


def open_store(kind: str, where: str) -> LedgerBackend:
    return SQLiteLedgerBackend(where) if kind == "sqlite" else RedisLedgerBackend(where)


# --- one run ---------------------------------------------------------------------------------


def run_threads(scheme: Scheme, jobs: list[tuple[int, int]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for t_in, t_out in jobs[k * PER_THREAD : (k + 1) * PER_THREAD]:
            result = run_request(scheme, t_in, t_out)
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def run_processes(name: str, kind: str, where: str) -> list[Outcome]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps([name, kind, where, k])],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(PROCS)
    ]
    outcomes = []
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            msg = f"worker exited {p.returncode}"
            raise RuntimeError(msg)
        outcomes += [tuple(o) for o in json.loads(out)]
    return outcomes  # type: ignore[return-value]


def worker(args: list[Any]) -> None:
    name, kind, where, k = args
    jobs = workload(PROCS * PER_PROC)[k * PER_PROC : (k + 1) * PER_PROC]
    scheme = Scheme(name, open_store(kind, where))
    print(json.dumps([run_request(scheme, t_in, t_out) for t_in, t_out in jobs]))


def measure(
    name: str, kind: str, where: str, mode: str, jobs: list[tuple[int, int]]
) -> dict[str, Any]:
    store = open_store(kind, where)
    store.set_ceiling(WF, None)
    store.reset(WF)
    ceiling = sum(cost(*j) for j in jobs) // 2
    store.set_ceiling(WF, ceiling)
    t0 = time.perf_counter()
    if mode == "threads":
        outcomes = run_threads(Scheme(name, store), jobs)
    else:
        outcomes = run_processes(name, kind, where)
    seconds = time.perf_counter() - t0
    ledger = store.get(WF)
    assert ledger is not None
    return {
        "ceiling": ceiling,
        "spent": ledger.spent,
        "reserved": ledger.reserved,
        "overshoot": max(ledger.spent - ceiling, 0.0),
        "share": ledger.spent / ceiling,
        "false": refused_while_fitting(ceiling, outcomes),
        "false_end": refused_fitting_at_the_end(ceiling - ledger.spent, outcomes),
        "ok": sum(1 for o in outcomes if o[0] == "ok"),
        "cut": sum(1 for o in outcomes if o[0] == "cut"),
        "refused": sum(1 for o in outcomes if o[0] == "refused"),
        "exact": abs(ledger.spent - sum(o[1] for o in outcomes)) < 1e-6,
        "seconds": seconds,
    }


def main() -> None:
    from benchmarks._report import write_section
    from benchmarks._servers import redis_server

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-leases-"))
    rows: list[list[object]] = []
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    with redis_server(workdir) as redis_url:
        stores = {"SQLite": ("sqlite", str(workdir / "l.sqlite")), "Redis": ("redis", redis_url)}
        for mode, n, label in (
            ("threads", THREADS * PER_THREAD, f"{THREADS} threads × {PER_THREAD}"),
            ("processes", PROCS * PER_PROC, f"{PROCS} processes × {PER_PROC}"),
        ):
            jobs = workload(n)
            for store_name, (kind, where) in stores.items():
                for name in SCHEMES:
                    r = measure(name, kind, where, mode, jobs)
                    results[(mode, store_name, name)] = r
                    print(label, store_name, name, r, flush=True)
                    rows.append(
                        [
                            label,
                            store_name,
                            name,
                            r["ceiling"],
                            r["overshoot"],
                            f"{100 * r['share']:.1f}%",
                            r["false"],
                            r["false_end"],
                            r["ok"],
                            r["cut"],
                            r["refused"],
                            "yes" if r["exact"] and r["reserved"] == 0 else "NO",
                            f"{r['seconds']:.1f}",
                        ]
                    )
    shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    write_section(
        "bench_budget_leases",
        "Budget leases (grow by 16 tokens, wait ≤ 30 s for room in flight) never overshoot Ω, "
        "use ≥ 95% of it and refuse no request whose real cost would have fit, under 16 "
        "threads and 4 processes on SQLite and Redis; today's worst-case reservation and a "
        "naive check-then-charge, same workload, same run.",
        [
            "workload",
            "store",
            "scheme",
            "Ω",
            "overshoot C",
            "Ω used",
            "refused while it fit: then",
            "at the end",
            "answered",
            "cut mid-way",
            "refused at start",
            "ledger = charges",
            "seconds",
        ],
        rows,
        notes=_notes(results, load_before, load_after),
    )


def _notes(
    results: dict[tuple[str, str, str], dict[str, Any]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    lease = [r for (_, _, s), r in results.items() if s == "leases"]
    held = [r for (_, _, s), r in results.items() if s == "reservation"]
    naive = [r for (_, _, s), r in results.items() if s.startswith("naive")]
    worst_share = min(r["share"] for r in lease)
    worst_false = max(max(r["false"], r["false_end"]) for r in lease)
    goals = (
        f"Leases: overshoot {max(r['overshoot'] for r in lease):g} (goal 0: "
        f"{'met' if max(r['overshoot'] for r in lease) == 0 else 'MISSED'}), Ω used "
        f"{100 * worst_share:.1f}% at least (goal ≥ 95%: "
        f"{'met' if worst_share >= 0.95 else 'MISSED'}), refused while it fit: {worst_false} "
        f"at most (goal 0: {'met' if worst_false == 0 else 'MISSED'}). Today's reservation: "
        f"{min(r['false'] for r in held)}–{max(r['false'] for r in held)} requests refused "
        "while their real cost fitted at the time (Ω still ends used: later requests take the "
        "room back, and requests admitted with a clipped grant are cut mid-way). Naive "
        f"check-then-charge: overshoot up to {max(r['overshoot'] for r in naive):g} C."
    )
    return (
        f"{goals} Each request: prompt 20–80 tokens, real answer 8–120, max_tokens "
        f"{MAX_TOKENS}, {1000 * TOKEN_S:g} ms per output token; Ω = half the workload's real "
        "cost. 'cut mid-way' requests are charged what they consumed (that C counts as used); "
        "'ledger = charges': spent equals the sum of what every request was charged and "
        "nothing stays reserved. Load average (1/5/15 min) before "
        f"{load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, after "
        f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} on this shared 2-core "
        "machine: compare within the run."
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
