"""BudgetCage: ceilings, leases, metering and exact ledgers on every backend."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from coreason_runtime import (
    BudgetExceededError,
    EventType,
    InvalidCeilingError,
    UnknownWorkflowError,
)
from coreason_runtime.budget import (
    BudgetCage,
    MemoryLedgerBackend,
    RedisLedgerBackend,
    SQLiteLedgerBackend,
)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def cage(request: pytest.FixtureRequest, tmp_path: Path, bus) -> BudgetCage:
    if request.param == "memory":
        backend = MemoryLedgerBackend()
    elif request.param == "sqlite":
        backend = SQLiteLedgerBackend(tmp_path / "ledger.sqlite")
    else:
        backend = RedisLedgerBackend(request.getfixturevalue("redis_url"))
    return BudgetCage(backend, bus)


def test_cost_is_input_plus_three_times_output(cage: BudgetCage) -> None:
    assert cage.cost(100, 10) == 130


def test_settled_charge_is_exactly_what_was_consumed(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=1000)
    with cage.reserve("wf", tokens_in=20, max_out=50, tier="local") as res:
        res.charge(tokens_in=18)
        res.charge(tokens_out=7)
    ledger = cage.get("wf")
    assert (ledger.spent, ledger.reserved, ledger.tokens_in, ledger.tokens_out) == (39, 0, 18, 7)
    assert ledger.by_tier == {"local": 39}


def test_lease_holds_the_prompt_and_one_chunk_until_settled(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=200)
    res = cage.open("wf", tokens_in=10, max_out=30, tier="local")
    assert cage.get("wf").reserved == 10 + 3 * 16  # the prompt and lease_tokens=16 outputs
    assert cage.remaining("wf") == 200 - 58
    res.settle()
    assert cage.get("wf").reserved == 0


def test_worst_case_reservation_holds_every_token_until_settled(cage: BudgetCage) -> None:
    old = BudgetCage(cage.backend, cage.bus, lease_tokens=None, lease_wait=0)
    old.set("wf", ceiling=200)
    res = old.open("wf", tokens_in=10, max_out=30, tier="local")
    assert old.get("wf").reserved == 100
    res.settle()
    assert old.get("wf").reserved == 0


def test_grant_is_clipped_to_what_is_left(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=50)
    res = cage.open("wf", tokens_in=20, max_out=100, tier="local")
    assert res.granted == 50
    assert res.max_out == 10  # (50 − 20 reserved for the prompt) / 3
    res.charge(tokens_in=20)
    assert res.max_out == 10
    res.settle()


def test_reserve_refused_when_prompt_and_one_token_do_not_fit(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=10)
    with pytest.raises(BudgetExceededError) as info:
        cage.open("wf", tokens_in=9, max_out=5, tier="local")
    assert info.value.workflow_id == "wf"
    assert cage.get("wf").reserved == 0


def test_check_stops_before_crossing_the_grant(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=30)
    with cage.reserve("wf", tokens_in=0, max_out=100, tier="local") as res:
        produced = 0
        with pytest.raises(BudgetExceededError):
            while True:
                res.check(tokens_out=1)
                res.charge(tokens_out=1)
                produced += 1
    assert produced == 10
    assert cage.spent("wf") == 30


def test_charge_that_crosses_is_recorded_then_raises(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=30)
    with cage.reserve("wf", tokens_in=0, max_out=100, tier="oracle") as res:
        res.charge(tokens_out=9)
        with pytest.raises(BudgetExceededError):
            res.charge(tokens_out=4)  # a streamed chunk that crossed: it was consumed
    assert cage.spent("wf") == 39  # overshoot of exactly that chunk


def test_unknown_workflow_is_a_typed_error(cage: BudgetCage) -> None:
    with pytest.raises(UnknownWorkflowError):
        cage.spent("nope")
    with pytest.raises(UnknownWorkflowError):
        cage.open("nope", 1, 1, "local")


@pytest.mark.parametrize("bad", [0, -5, math.inf, math.nan, "lots"])
def test_bad_ceiling_is_refused_and_changes_nothing(cage: BudgetCage, bad: object) -> None:
    cage.set("wf", ceiling=100)
    with pytest.raises(InvalidCeilingError):
        cage.set("wf", ceiling=bad)  # type: ignore[arg-type]
    assert cage.get("wf").ceiling == 100


def test_reset_zeroes_spend_and_keeps_ceiling(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=100)
    with cage.reserve("wf", 5, 5, "local") as res:
        res.charge(5, 5)
    ledger = cage.reset("wf")
    assert (ledger.spent, ledger.ceiling) == (0, 100)
    assert cage.history("wf") == []


def test_history_lists_every_settled_charge(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=None)
    for n in (1, 2, 3):
        with cage.reserve("wf", n, 1, "local") as res:
            res.charge(tokens_in=n)
    assert [c.tokens_in for c in cage.history("wf")] == [1, 2, 3]


def test_events_follow_the_reservation_lifecycle(cage: BudgetCage) -> None:
    cage.set("wf", ceiling=100)
    seen: list[EventType] = []
    cage.bus.subscribe(lambda e: seen.append(e.type), "budget")
    with cage.reserve("wf", 1, 1, "local") as res:
        res.charge(1, 1)
    assert seen == [EventType.BUDGET_RESERVED, EventType.BUDGET_CHARGED]


def test_sqlite_ledger_survives_a_restart(tmp_path: Path, bus) -> None:
    path = tmp_path / "ledger.sqlite"
    first = BudgetCage(SQLiteLedgerBackend(path), bus)
    first.set("wf", ceiling=100)
    with first.reserve("wf", 10, 1, "local") as res:
        res.charge(10, 1)
    first.close()
    second = BudgetCage(SQLiteLedgerBackend(path), bus)
    assert second.spent("wf") == 13


def test_orphaned_reservation_of_a_dead_process_is_settled_at_its_checkpoint(
    tmp_path: Path, bus
) -> None:
    import subprocess
    import sys

    path = tmp_path / "ledger.sqlite"
    BudgetCage(SQLiteLedgerBackend(path), bus).set("wf", ceiling=1000)
    script = (
        "import os, sys\n"
        "from coreason_runtime.budget import BudgetCage, SQLiteLedgerBackend\n"
        f"cage = BudgetCage(SQLiteLedgerBackend({str(path)!r}))\n"
        "res = cage.open('wf', 10, 100, 'local')\n"
        "res.charge(10, 20)\n"
        "res.checkpoint()\n"
        "os._exit(9)\n"  # dies mid-request, never settles
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    during = SQLiteLedgerBackend(path).get("wf")
    # the lease: the prompt and 16 outputs, grown by 16 more when 20 were charged
    assert during is not None and during.reserved == 10 + 3 * 32
    cage = BudgetCage(SQLiteLedgerBackend(path), bus)
    ledger = cage.get("wf")
    assert (ledger.reserved, ledger.spent) == (0, 70)
    assert "recovered" in cage.history("wf")[-1].note


# --- per-tier weights ----------------------------------------------------------------------


def test_a_tier_with_its_own_weights_is_charged_by_them(cage: BudgetCage) -> None:
    cage.set_tier_weights("oracle", 10, 30)
    cage.set("wf", ceiling=None)
    with cage.reserve("wf", tokens_in=5, max_out=4, tier="oracle") as res:
        assert res.granted == 5 * 10 + 4 * 30
        res.charge(tokens_in=5, tokens_out=2)
    with cage.reserve("wf", tokens_in=5, max_out=4, tier="local") as res:
        res.charge(tokens_in=5, tokens_out=2)
    ledger = cage.get("wf")
    assert ledger.by_tier == {"oracle": 110, "local": 11}
    assert ledger.spent == 121 and cage.cost(5, 2) == 11 and cage.cost(5, 2, "oracle") == 110


def test_max_out_uses_the_tiers_output_weight(cage: BudgetCage) -> None:
    cage.set_tier_weights("oracle", weight_out=30)
    cage.set("wf", ceiling=100)
    res = cage.open("wf", tokens_in=10, max_out=50, tier="oracle")
    assert res.granted == 100 and res.max_out == 3  # (100 - 10·1) / 30
    res.charge(tokens_in=10, tokens_out=3)
    with pytest.raises(BudgetExceededError):
        res.charge(tokens_out=1)
    res.settle()
    assert cage.get("wf").spent == 10 + 4 * 30


def test_bad_tier_weights_change_nothing(cage: BudgetCage) -> None:
    with pytest.raises(InvalidCeilingError):
        cage.set_tier_weights("oracle", 0, 3)
    assert cage.weights("oracle") == (1.0, 3.0)
