"""Store get/put latency (p50/p99) for the SQLite and Redis cache stores, in the same run.

A real redis-server is started on a free 127.0.0.1 port with ``--save ""`` (no persistence)
and stopped afterwards. Each store gets the same entries (a realistic artifact: a result tree,
three proof steps and a line of code), then random gets over them (90 % present, 10 % absent).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coreason_runtime.cache import CacheStore, Entry, RedisStore, SQLiteStore  # noqa: E402

from benchmarks._report import write_section  # noqa: E402
from benchmarks._servers import redis_server  # noqa: E402


def _entry(i: int) -> Entry:
    result = ["Mul", [["@rat", "1", "2"], ["sin", [["Add", [["@sym", "$b0"], ["@int", "1"]]]]]]]
    return Entry(
        key=f"{i:064x}",
        kind="integral",
        artifact={
            "result": result,
            "steps": ["u = 2*x + 1", "∫ sin(u) du/2", "-cos(u)/2"],
            "code": "sympy.integrate(sympy.sin(2*x + 1), x)",
        },
        verifier="sympy-numeric",
        verifier_hash="0123456789abcdef",
        provenance={"workflow_id": f"w{i % 7}", "project": "bench"},
        text=f"Tuple(sin($b0),$b0)#{i}",
        workflows=[f"w{i % 7}"],
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def _measure(store: CacheStore, n: int, seed: int = 3) -> dict[str, list[float]]:
    rng = random.Random(seed)
    puts: list[float] = []
    gets: list[float] = []
    for i in range(n):
        e = _entry(i)
        t0 = time.perf_counter()
        store.put(e)
        puts.append(time.perf_counter() - t0)
    for _ in range(n):
        i = rng.randrange(int(n * 1.1))
        t0 = time.perf_counter()
        store.get(f"{i:064x}")
        gets.append(time.perf_counter() - t0)
    return {"put": puts, "get": gets}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        with redis_server(tmp) as url:
            results = {}
            sqlite = SQLiteStore(tmp / "bench.sqlite")
            results["SQLite (WAL, file)"] = _measure(sqlite, args.n)
            sqlite.close()
            redis_store = RedisStore(url)
            results["Redis (127.0.0.1, Lua upsert)"] = _measure(redis_store, args.n)
            redis_store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for name, r in results.items():
        for op in ("put", "get"):
            rows.append(
                [
                    name,
                    op,
                    args.n,
                    f"{_pct(r[op], 0.5):.0f}",
                    f"{_pct(r[op], 0.99):.0f}",
                    f"{statistics.fmean(r[op]) * 1e6:.0f}",
                ]
            )
    sq_p99 = _pct(results["SQLite (WAL, file)"]["get"], 0.99)
    rd_p99 = _pct(results["Redis (127.0.0.1, Lua upsert)"]["get"], 0.99)
    notes = (
        f"get p99 ratio SQLite/Redis: {sq_p99 / rd_p99:.2f}. Puts are atomic upserts (SQLite "
        "BEGIN IMMEDIATE transaction; Redis one Lua script); gets hit 90 % present and 10 % "
        "absent keys. redis-server was started by the script on a free port with "
        '`--save ""` and stopped after. Latencies include JSON encoding of the entry. '
        f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(the machine is shared), which dominates the p99 tails."
    )
    write_section(
        "bench_cache_store",
        "Cache store get/put latency, SQLite (default, one kernel) vs Redis (many kernels).",
        ["store", "op", "ops", "p50 µs", "p99 µs", "mean µs"],
        rows,
        notes=notes,
        command=f".venv/bin/python benchmarks/bench_cache_store.py -n {args.n}",
    )


if __name__ == "__main__":
    main()
