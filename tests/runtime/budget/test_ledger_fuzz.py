"""Fuzzed ledger programs: reserve / charge / settle / fail / kill -9 / recover, interleaved
across threads and processes on one SQLite ledger.

Invariants, whatever the interleaving: spent ≤ Ω; spent = Σ of the settled charges; once every
process is gone and a new cage started, no reservation is left; with no process killed, spent
is exactly what the requests consumed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from coreason_runtime import BudgetExceededError
from coreason_runtime.budget import BudgetCage, SQLiteLedgerBackend
from hypothesis import given, settings

from tests._fixtures.fuzz import examples, ledger_programs

Request = tuple[int, list[int], str]


class _Failed(Exception):
    """A request that fails mid-way (its reservation still settles)."""


def _request(
    cage: BudgetCage, max_out: int, request: Request, on_charged: Any = lambda: None
) -> float:
    """One request; what it consumed (0 if refused). ``on_charged`` runs after each durable
    charge (where a kill -9 lands mid-request)."""
    tokens_in, chunks, end = request
    res = None
    try:
        with cage.reserve("wf", tokens_in, max_out, "local") as res:
            res.charge(tokens_in=tokens_in)
            for chunk in chunks:
                n = min(chunk, res.max_out)
                if n == 0:
                    break
                res.check(tokens_out=n)
                res.charge(tokens_out=n)
                res.checkpoint()  # durable, so a kill -9 right after loses nothing
                on_charged()
            if end == "error":
                raise _Failed
            return res.consumed
    except BudgetExceededError:
        # refused at the start (nothing consumed), or cut off mid-way when the lease could not
        # grow: charged exactly what it consumed
        return res.consumed if res is not None else 0.0
    except _Failed:
        assert res is not None
        return res.consumed


def _threads(
    cage: BudgetCage, max_out: int, threads: list[list[Request]], on_done: Any, on_charged: Any
) -> float:
    """Run each thread's requests; the total consumed by all of them."""
    totals = [0.0] * len(threads)

    def work(i: int) -> None:
        for request in threads[i]:
            totals[i] += _request(cage, max_out, request, on_charged)
            on_done()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(totals)


def _process(path: str, threads: list[list[Request]], kill_after: int | None, max_out: int) -> None:
    """A child process: its threads run their requests; once ``kill_after`` requests have
    finished it dies by kill -9 at the next charge (its threads mid-request), else it reports
    its total."""
    cage = BudgetCage(SQLiteLedgerBackend(path))  # recovers orphans of dead siblings
    lock = threading.Lock()
    finished = [0]

    def on_done() -> None:
        with lock:
            finished[0] += 1

    def on_charged() -> None:
        if kill_after is not None and finished[0] >= kill_after:
            os._exit(9)  # like kill -9: no settle, no cleanup

    total = _threads(cage, max_out, threads, on_done, on_charged)
    if kill_after is not None:
        os._exit(9)
    Path(f"{path}.{os.getpid()}.json").write_text(json.dumps(total))
    os._exit(0)


def _recover_together(path: Path, n: int = 3) -> None:
    """``n`` coordinators starting at once after the crashes, each recovering orphans."""
    start = threading.Barrier(n)

    def recover() -> None:
        store = SQLiteLedgerBackend(path)
        start.wait(10)
        BudgetCage(store).close()

    threads = [threading.Thread(target=recover) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def _check_invariants(path: Path, ceiling: float) -> tuple[float, float]:
    """Recover what the dead left (several at once), check the invariants; (spent, Σ charges)."""
    _recover_together(path)
    cage = BudgetCage(SQLiteLedgerBackend(path))
    ledger = cage.get("wf")
    charged = sum(c.cost for c in cage.history("wf", limit=1_000_000))
    assert ledger.spent <= ceiling + 1e-6
    assert abs(ledger.spent - charged) < 1e-6
    assert ledger.reserved == 0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchone() == (0,)
    cage.close()
    return ledger.spent, charged


def run_process_program(workdir: Path, program: dict[str, Any]) -> None:
    """Fork the program's processes on one ledger, kill some, recover, check the invariants."""
    path = workdir / "l.sqlite"
    BudgetCage(SQLiteLedgerBackend(path)).set("wf", ceiling=program["ceiling"])
    fork = multiprocessing.get_context("fork")
    procs = [
        fork.Process(target=_process, args=(str(path), threads, kill, program["max_out"]))
        for threads, kill in program["processes"]
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode in (0, 9), p.exitcode
    spent, _ = _check_invariants(path, program["ceiling"])
    reported = [float(json.loads(f.read_text())) for f in path.parent.glob("l.sqlite.*.json")]
    if all(p.exitcode == 0 for p in procs):
        assert abs(spent - sum(reported)) < 1e-6
    else:
        assert spent >= sum(reported) - 1e-6


@settings(max_examples=examples(8))
@given(program=ledger_programs)
def test_processes_killed_at_random_points_leave_the_ledger_exact(
    tmp_path_factory: Any, program: dict[str, Any]
) -> None:
    run_process_program(tmp_path_factory.mktemp("ledger"), program)


@settings(max_examples=examples(25))
@given(program=ledger_programs)
def test_threads_interleaving_requests_leave_the_ledger_exact(
    tmp_path_factory: Any, program: dict[str, Any]
) -> None:
    path = tmp_path_factory.mktemp("ledger") / "l.sqlite"
    cage = BudgetCage(SQLiteLedgerBackend(path))
    cage.set("wf", ceiling=program["ceiling"])
    threads = [t for threads, _ in program["processes"] for t in threads]
    consumed = _threads(cage, program["max_out"], threads, lambda: None, lambda: None)
    spent, _ = _check_invariants(path, program["ceiling"])
    assert abs(spent - consumed) < 1e-6
