"""Claim: critical-path scheduling (CPCS) shortens DAG makespans against FIFO, HEFT and Dask.

Part 1, policies: 200 random layered DAGs (20–60 tasks, lognormal ETAs, p_succ ~ U[0.5, 1],
failed attempts retried, true durations = ETA × lognormal noise) through ONE discrete-event
simulator (coreason_runtime.sched._sim) for every policy, with common random numbers. Dask's
policy there is its static ordering ``dask.order.order``. An oracle lower bound
max(realised critical path, realised work / cores) shows the headroom any policy has.

Part 2, mechanism: a few smaller DAGs run for real: forked worker processes spinning CPU for
their realised durations on 2 cores, scheduled live by ``Scheduler`` (cpcs / heft / fifo), and
the same DAGs through dask.distributed (LocalCluster, 2 single-thread worker processes,
``retries=``).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coreason_runtime.sched import (  # noqa: E402
    POLICIES,
    CallableJob,
    Scheduler,
    SubgoalDAG,
    upward_ranks,
)
from coreason_runtime.sched._sim import random_layered_dag, realise, simulate  # noqa: E402

from benchmarks._report import write_section  # noqa: E402

N_DAGS = 200
REAL_DAGS = 4
REAL_WORK_S = 5.0  # CPU seconds of realised work per real DAG


def _lower_bound(dag: SubgoalDAG, real, cores: int) -> float:  # type: ignore[no-untyped-def]
    dur = {}
    for t in dag.tasks:
        k = real.successes[t.id].index(True) + 1
        dur[t.id] = sum(real.durations[t.id][:k])
    cp = max(upward_ranks(dur, dag.successors()).values())
    return max(cp, sum(dur.values()) / cores)


def simulated(cores: int, p_range: tuple[float, float]) -> dict[str, list[float]]:
    rng = random.Random(20261122)
    out: dict[str, list[float]] = {k: [] for k in ("fifo", "heft", "dask", "cpcs", "bound")}
    for i in range(N_DAGS):
        dag = random_layered_dag(rng, p_range=p_range)
        real = realise(dag, random.Random(10_000 + i))
        for name in ("fifo", "heft", "dask", "cpcs"):
            out[name].append(simulate(dag, real, POLICIES[name](), cores=cores).makespan)
        out["bound"].append(_lower_bound(dag, real, cores))
    return out


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.mean(x / y for x, y in zip(a, b, strict=True))


def _spin(seconds: float, ok: bool) -> bool:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return ok


def _dask_task(
    tid: str, durations: list[float], oks: list[bool], counter_dir: str, *deps: object
) -> str:
    counter = Path(counter_dir) / tid
    attempt = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(attempt + 1))
    if not _spin(durations[attempt], oks[attempt]):
        msg = f"{tid} attempt {attempt + 1} failed"
        raise RuntimeError(msg)
    return tid


def real_runs() -> tuple[list[list[object]], str]:
    import asyncio

    from distributed import Client, LocalCluster

    rng = random.Random(7)
    rows: list[list[object]] = []
    totals: dict[str, list[float]] = {k: [] for k in ("fifo", "heft", "dask", "cpcs")}
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        for i in range(REAL_DAGS):
            dag = random_layered_dag(rng, n_min=12, n_max=20)
            real = realise(dag, random.Random(500 + i))
            work = sum(
                sum(real.durations[t.id][: real.successes[t.id].index(True) + 1]) for t in dag.tasks
            )
            scale = REAL_WORK_S / work
            dur = {k: [d * scale for d in v] for k, v in real.durations.items()}
            for t in dag.tasks:  # the scheduler knows the ETAs in the same time unit
                t.eta = t.eta * scale
            sim_cpcs = simulate(dag, realise_scaled(real, scale), POLICIES["cpcs"]()).makespan
            for policy in ("fifo", "heft", "cpcs"):
                actions = {
                    t.id: (
                        lambda s, n, d=dur[t.id], ok=real.successes[t.id]: CallableJob(
                            _spin, d[n - 1], ok[n - 1]
                        )
                    )
                    for t in dag.tasks
                }
                sched = Scheduler(cores=2, tick_s=0.05, policy=policy)
                t0 = time.perf_counter()
                asyncio.run(sched.run(dag.model_copy(deep=True), actions))
                totals[policy].append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as counters:
                futures: dict[str, object] = {}
                t0 = time.perf_counter()
                for tid in dag.topological_order():
                    spec = dag.task(tid)
                    futures[tid] = client.submit(
                        _dask_task,
                        tid,
                        dur[tid],
                        real.successes[tid],
                        counters,
                        *[futures[d] for d in spec.deps],
                        key=f"{i}-{tid}",
                        retries=spec.max_attempts - 1,
                        pure=False,
                    )
                client.gather(list(futures.values()))
                totals["dask"].append(time.perf_counter() - t0)
            rows.append(
                [
                    f"real DAG {i} ({len(dag.tasks)} tasks, {REAL_WORK_S:.0f} CPU-s work)",
                    totals["fifo"][-1],
                    totals["heft"][-1],
                    totals["dask"][-1],
                    totals["cpcs"][-1],
                    sim_cpcs,
                ]
            )
    finally:
        client.close()
        cluster.close()
    summary = (
        f"real runs, CPCS vs FIFO {_ratio(totals['cpcs'], totals['fifo']):.3f}, "
        f"vs HEFT {_ratio(totals['cpcs'], totals['heft']):.3f}, "
        f"vs Dask {_ratio(totals['cpcs'], totals['dask']):.3f} (mean makespan ratios)"
    )
    return rows, summary


def realise_scaled(real, scale: float):  # type: ignore[no-untyped-def]
    from coreason_runtime.sched._sim import Realisation

    return Realisation(
        {k: [d * scale for d in v] for k, v in real.durations.items()}, real.successes
    )


def main() -> None:
    rows: list[list[object]] = []
    notes: list[str] = []
    for cores, p_range, label in (
        (2, (0.5, 1.0), "p_succ~U[0.5,1]"),
        (2, (1.0, 1.0), "p_succ=1 (control)"),
        (8, (0.5, 1.0), "p_succ~U[0.5,1]"),
    ):
        t0 = time.perf_counter()
        r = simulated(cores, p_range)
        rows.append(
            [
                f"sim, {N_DAGS} DAGs, {cores} cores, {label}",
                statistics.mean(r["fifo"]),
                statistics.mean(r["heft"]),
                statistics.mean(r["dask"]),
                statistics.mean(r["cpcs"]),
                statistics.mean(r["bound"]),
            ]
        )
        notes.append(
            f"- {cores} cores, {label}: CPCS/FIFO = {_ratio(r['cpcs'], r['fifo']):.3f}, "
            f"CPCS/HEFT = {_ratio(r['cpcs'], r['heft']):.3f}, "
            f"CPCS/Dask-order = {_ratio(r['cpcs'], r['dask']):.3f}; "
            f"FIFO/bound = {_ratio(r['fifo'], r['bound']):.3f}, "
            f"HEFT/bound = {_ratio(r['heft'], r['bound']):.3f}, "
            f"CPCS/bound = {_ratio(r['cpcs'], r['bound']):.3f} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    real_rows, real_summary = real_runs()
    rows += real_rows
    notes.append(f"- {real_summary}; last column: the simulator's CPCS makespan for that DAG.")
    write_section(
        "bench_sched_makespan",
        "CPCS makespan ≥ 20% below FIFO, ≥ 5% below HEFT when p_succ < 1, and below Dask's "
        "scheduler, on 200 random layered DAGs.",
        [
            "run",
            "FIFO s",
            "HEFT s",
            "Dask s",
            "CPCS s",
            "sim rows: lower bound s; real rows: simulated CPCS s",
        ],
        rows,
        notes="Mean per-DAG makespan ratios (lower is better for CPCS):\n\n"
        + "\n".join(notes)
        + "\n\nThe simulator is the same for every policy (common random numbers: each "
        "(task, attempt) has one drawn duration and outcome). Dask in the simulation is its "
        "static `dask.order` priority; in the real rows it is dask.distributed itself. "
        "**Verdict:** on 2 cores this DAG family is work-bound: even FIFO ends within a few "
        "percent of the oracle lower bound max(critical path, work/cores), so the 20% (FIFO) "
        "and 5% (HEFT) goals are not reachable by any policy here; CPCS's gains are the gap "
        "it closes to the bound. The real rows run the live mechanism (forked workers, "
        "50 ms tick, physical SIGSTOP preemption) on a shared 2-core machine, so their "
        "absolute times carry other agents' load.",
    )


if __name__ == "__main__":
    main()
