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


# --- leases under over-demand: never overshoot, never refuse what fits ------------------------

# Each request reads its script: (prompt tokens, real output tokens); max_out is far larger,
# like a router's max_tokens. Demand is about twice Ω, so about half must be refused.
_SCRIPT = [(8 + (i * 7) % 13, 4 + (i * 11) % 37) for i in range(64)]
_MAX_OUT = 64
_LEASE_WORKER = """
import json, sys
from coreason_runtime import BudgetExceededError
from coreason_runtime.budget import BudgetCage, RedisLedgerBackend, SQLiteLedgerBackend
kind, where, n, offset, max_out = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
store = SQLiteLedgerBackend(where) if kind == "sqlite" else RedisLedgerBackend(where)
cage = BudgetCage(store, lease_tokens=8, lease_wait=60)
script = json.loads(sys.argv[6])
out = []
for i in range(n):
    t_in, t_out = script[(offset + i) % len(script)]
    res = None
    try:
        res = cage.open("wf", t_in, max_out, "local")
        res.check(tokens_in=t_in)
        res.charge(tokens_in=t_in)
        for _ in range(t_out):
            res.check(tokens_out=1)
            res.charge(tokens_out=1)
        out.append(("ok", res.consumed, 0.0))
    except BudgetExceededError:
        charged = res.consumed if res is not None else 0.0
        out.append(("refused", charged, t_in + 3 * t_out - charged))
    finally:
        if res is not None:
            res.settle()
print(json.dumps(out))
"""

Outcome = tuple[str, float, float]  # ("ok" | "refused", C charged, C it still needed)


def _request(cage: BudgetCage, t_in: int, t_out: int) -> Outcome:
    res = None
    try:
        res = cage.open("wf", t_in, _MAX_OUT, "local")
        res.check(tokens_in=t_in)
        res.charge(tokens_in=t_in)
        for _ in range(t_out):
            res.check(tokens_out=1)
            res.charge(tokens_out=1)
        return "ok", res.consumed, 0.0
    except BudgetExceededError:
        charged = res.consumed if res is not None else 0.0
        return "refused", charged, t_in + 3 * t_out - charged
    finally:
        if res is not None:
            res.settle()


def _ceiling(requests: int) -> float:
    demand = sum(t_in + 3 * t_out for t_in, t_out in (_SCRIPT * 4)[:requests])
    return float(demand // 2)


def _assert_exact_and_no_false_refusal(
    cage: BudgetCage, ceiling: float, outcomes: list[Outcome]
) -> None:
    ledger = cage.get("wf")
    assert ledger.spent <= ceiling  # 0 overshoot
    assert ledger.reserved == 0
    assert ledger.spent == sum(charged for _, charged, _ in outcomes)  # exactly what ran
    needs = [need for kind, _, need in outcomes if kind == "refused"]
    assert needs, "the workload must over-demand Ω"
    # no refused request's remaining need fits in what is left of Ω at the end
    assert min(needs) > ceiling - ledger.spent


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_leases_under_threads_never_overshoot_and_refuse_only_what_does_not_fit(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = (
        SQLiteLedgerBackend(tmp_path / "l.sqlite")
        if backend == "sqlite"
        else RedisLedgerBackend(request.getfixturevalue("redis_url"))
    )
    cage = BudgetCage(store, lease_tokens=8, lease_wait=60)
    threads_n, per = 8, 12
    ceiling = _ceiling(threads_n * per)
    cage.set("wf", ceiling=ceiling)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for i in range(per):
            t_in, t_out = _SCRIPT[(k * per + i) % len(_SCRIPT)]
            result = _request(cage, t_in, t_out)
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_exact_and_no_false_refusal(cage, ceiling, outcomes)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_leases_under_processes_never_overshoot_and_refuse_only_what_does_not_fit(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import json

    if backend == "sqlite":
        where = str(tmp_path / "l.sqlite")
        cage = BudgetCage(SQLiteLedgerBackend(where))
    else:
        where = request.getfixturevalue("redis_url")
        cage = BudgetCage(RedisLedgerBackend(where))
    procs_n, per = 3, 16
    ceiling = _ceiling(procs_n * per)
    cage.set("wf", ceiling=ceiling)
    script = json.dumps(_SCRIPT)
    argv = [sys.executable, "-c", _LEASE_WORKER, backend, where, str(per)]
    procs = [
        subprocess.Popen(
            [*argv, str(k * per), str(_MAX_OUT), script],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(procs_n)
    ]
    outcomes: list[Outcome] = [
        (kind, charged, need)
        for p in procs
        for kind, charged, need in json.loads(p.communicate(timeout=300)[0])
    ]
    assert len(outcomes) == procs_n * per
    _assert_exact_and_no_false_refusal(cage, ceiling, outcomes)
