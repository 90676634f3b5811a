"""The cage holds under concurrent threads and processes: Ω is never overshot."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from coreason_runtime import BudgetExceededError
from coreason_runtime.budget import BudgetCage, RedisLedgerBackend, SQLiteLedgerBackend


def _hammer(cage: BudgetCage, n: int, results: list[str]) -> None:
    for _ in range(n):
        try:
            with cage.reserve("wf", tokens_in=10, max_out=10, tier="local") as res:
                res.charge(tokens_in=10)
                for _ in range(10):
                    res.check(tokens_out=1)
                    res.charge(tokens_out=1)
            results.append("ok")
        except BudgetExceededError:
            results.append("refused")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_threads_sharing_one_ceiling_never_overshoot(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = (
        SQLiteLedgerBackend(tmp_path / "l.sqlite")
        if backend == "sqlite"
        else RedisLedgerBackend(request.getfixturevalue("redis_url"))
    )
    cage = BudgetCage(store)
    cage.set("wf", ceiling=4_000)  # room for 100 full requests of C=40
    results: list[str] = []
    threads = [threading.Thread(target=_hammer, args=(cage, 20, results)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = cage.get("wf")
    assert ledger.spent <= 4_000
    assert ledger.reserved == 0
    assert ledger.spent == 40 * results.count("ok")
    assert results.count("ok") == 100


def test_processes_sharing_one_sqlite_ledger_never_overshoot(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    BudgetCage(SQLiteLedgerBackend(path)).set("wf", ceiling=2_000)  # 50 requests of C=40
    worker = (
        "from coreason_runtime import BudgetExceededError\n"
        "from coreason_runtime.budget import BudgetCage, SQLiteLedgerBackend\n"
        f"cage = BudgetCage(SQLiteLedgerBackend({str(path)!r}))\n"
        "ok = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        with cage.reserve('wf', 10, 10, 'local') as r:\n"
        "            r.charge(10, 10)\n"
        "        ok += 1\n"
        "    except BudgetExceededError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    oks = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    ledger = BudgetCage(SQLiteLedgerBackend(path)).get("wf")
    assert sum(oks) == 50
    assert ledger.spent == 2_000
    assert ledger.reserved == 0
