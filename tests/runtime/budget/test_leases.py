"""Budget leases: grants grow by chunks, wait for room in flight, refuse only what won't fit."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from coreason_runtime import BudgetExceededError, ConfigurationError, EventBus
from coreason_runtime.budget import (
    BudgetCage,
    MemoryLedgerBackend,
    RedisLedgerBackend,
    Reservation,
    SQLiteLedgerBackend,
)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_cage(
    request: pytest.FixtureRequest, tmp_path: Path, bus: EventBus
) -> Callable[..., BudgetCage]:
    if request.param == "memory":
        backend = MemoryLedgerBackend()
    elif request.param == "sqlite":
        backend = SQLiteLedgerBackend(tmp_path / "ledger.sqlite")
    else:
        backend = RedisLedgerBackend(request.getfixturevalue("redis_url"))

    def make(**options: object) -> BudgetCage:
        return BudgetCage(backend, bus, **options)  # type: ignore[arg-type]

    return make


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for ``condition`` (polled), failing the test if it does not hold in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _produce(res: Reservation, n: int) -> None:
    for _ in range(n):
        res.check(tokens_out=1)
        res.charge(tokens_out=1)


def test_a_lease_grows_one_chunk_at_a_time(make_cage: Callable[..., BudgetCage]) -> None:
    cage = make_cage(lease_tokens=4)
    cage.set("wf", ceiling=1000)
    res = cage.open("wf", tokens_in=10, max_out=100, tier="local")
    res.charge(tokens_in=10)
    assert res.granted == 10 + 3 * 4
    _produce(res, 4)
    assert res.granted == 10 + 3 * 4  # covered: no growth yet
    _produce(res, 1)
    assert res.granted == 10 + 3 * 8
    assert cage.get("wf").reserved == res.granted
    res.settle()
    ledger = cage.get("wf")
    assert (ledger.spent, ledger.reserved) == (10 + 3 * 5, 0)


def test_a_lease_never_grows_past_what_the_request_can_use(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=16)
    cage.set("wf", ceiling=1000)
    with cage.reserve("wf", tokens_in=10, max_out=20, tier="local") as res:
        res.charge(tokens_in=10)
        _produce(res, 17)
        assert res.granted == 10 + 3 * 20  # grew by 4 tokens, not by a chunk of 16


def test_refused_at_once_when_nothing_in_flight_can_give_room_back(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=4, lease_wait=3600)
    cage.set("wf", ceiling=30)
    res = cage.open("wf", tokens_in=0, max_out=100, tier="local")
    with pytest.raises(BudgetExceededError):
        _produce(res, 100)
    assert res.tokens_out == 10  # exactly what fits: 10 × 3 = Ω
    assert res.waited < cage.lease_wait  # no lease in flight: it did not wait for one
    res.settle()
    assert cage.spent("wf") == 30


def test_a_request_that_cannot_grow_waits_for_a_lease_in_flight_to_settle(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=16, lease_wait=60)
    cage.set("wf", ceiling=100)
    holder = cage.open("wf", tokens_in=0, max_out=30, tier="local")  # holds 48 unused
    waiter = cage.open("wf", tokens_in=0, max_out=30, tier="local")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _produce(waiter, 30)  # C=90: needs the room `holder` holds
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    # once the waiter waits, only the holder's grant is left to give back
    _until(lambda: cage.backend.releasable("wf") == holder.granted, "the waiter to wait")
    _produce(holder, 2)
    holder.settle()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    waiter.settle()
    ledger = cage.get("wf")
    assert (ledger.spent, ledger.reserved) == (96, 0)
    assert waiter.waited > 0


def test_a_waiting_lease_gives_its_unused_grant_to_one_that_fits(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=1, lease_wait=60)
    cage.set("wf", ceiling=6)
    a = cage.open("wf", tokens_in=0, max_out=5, tier="local")
    b = cage.open("wf", tokens_in=0, max_out=5, tier="local")
    a.charge(tokens_in=1)
    b.charge(tokens_in=1)  # each holds 2 unused, the pool is empty: neither fits a token alone
    outcome: list[str] = []

    def run_a() -> None:
        try:
            a.check(tokens_out=1)
            outcome.append("a grew")
        except BudgetExceededError:
            outcome.append("a cut off")

    thread = threading.Thread(target=run_a)
    thread.start()
    _until(lambda: cage.backend.releasable("wf") == b.granted, "a to wait")
    b.check(tokens_out=1)  # a's unused 2 and b's own 2 cover b's token
    b.charge(tokens_out=1)
    b.settle()
    thread.join(timeout=60)
    assert outcome == ["a cut off"]  # 1 is left, a token costs 3: nothing in flight remains
    a.settle()
    ledger = cage.get("wf")
    assert (ledger.spent, ledger.reserved) == (5, 0)


def test_open_waits_for_room_while_a_lease_in_flight_holds_it(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=5, lease_wait=60)
    cage.set("wf", ceiling=20)
    holder = cage.open("wf", tokens_in=0, max_out=5, tier="local")  # grant 15 of 20
    opened: list[Reservation] = []
    thread = threading.Thread(target=lambda: opened.append(cage.open("wf", 10, 5, "local")))
    thread.start()
    _produce(holder, 1)
    assert opened == []  # 10 + 3 does not fit in the 5 left
    holder.settle()
    thread.join(timeout=60)
    assert len(opened) == 1 and opened[0].granted == 20 - 3
    opened[0].settle()


def test_open_is_refused_at_once_when_nothing_is_in_flight(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_wait=3600)
    cage.set("wf", ceiling=12)
    with pytest.raises(BudgetExceededError):
        cage.open("wf", tokens_in=10, max_out=5, tier="local")
    assert cage.get("wf").reserved == 0


def test_a_wait_ends_when_interrupted_and_the_lease_holds_only_what_it_consumed(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=2, lease_wait=60)
    cage.set("wf", ceiling=12)
    holder = cage.open("wf", tokens_in=0, max_out=2, tier="local")  # 6 of 12
    res = cage.open("wf", tokens_in=0, max_out=5, tier="local")  # the other 6
    _produce(res, 2)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    assert res.ensure(tokens_out=1, interrupted=stop.is_set) is False
    assert res.granted == 6  # it gave nothing back: all of it was consumed
    holder.settle()
    assert res.ensure(tokens_out=1) is True
    res.settle()


def test_a_wait_is_bounded(make_cage: Callable[..., BudgetCage]) -> None:
    cage = make_cage(lease_tokens=2, lease_wait=0.2)
    cage.set("wf", ceiling=12)
    holder = cage.open("wf", tokens_in=0, max_out=2, tier="local")  # never settles in time
    res = cage.open("wf", tokens_in=0, max_out=5, tier="local")
    _produce(res, 2)
    with pytest.raises(BudgetExceededError, match="after waiting"):
        res.check(tokens_out=1)
    res.settle()
    holder.settle()
    assert cage.spent("wf") == 6


def test_correct_replaces_counts_by_a_servers_usage(make_cage: Callable[..., BudgetCage]) -> None:
    cage = make_cage()
    cage.set("wf", ceiling=1000)
    with cage.reserve("wf", tokens_in=10, max_out=50, tier="oracle") as res:
        res.charge(tokens_in=12, tokens_out=9)
        res.correct(tokens_in=11, tokens_out=7)
    ledger = cage.get("wf")
    assert (ledger.tokens_in, ledger.tokens_out, ledger.spent) == (11, 7, 32)


def test_max_out_of_a_lease_counts_what_it_could_still_be_granted(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=4)
    cage.set("wf", ceiling=100)
    res = cage.open("wf", tokens_in=10, max_out=1000, tier="oracle")
    assert res.granted == 22
    assert res.max_out == 30  # (100 − 10 for the prompt) / 3, not the 4 of its grant
    res.settle()


def test_lease_settings_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        BudgetCage(lease_tokens=0)
    with pytest.raises(ConfigurationError):
        BudgetCage(lease_wait=-1)


def test_a_store_written_before_leases_gains_the_lease_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE reservations (reservation_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL,"
        " tier TEXT NOT NULL, granted REAL NOT NULL, consumed REAL NOT NULL DEFAULT 0,"
        " tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,"
        " pid INTEGER NOT NULL, host TEXT NOT NULL, created REAL NOT NULL);"
    )
    db.close()
    cage = BudgetCage(SQLiteLedgerBackend(path), lease_tokens=1)
    cage.set("wf", ceiling=100)
    with cage.reserve("wf", tokens_in=0, max_out=10, tier="local") as res:
        _produce(res, 3)
    assert cage.spent("wf") == 9


def test_the_false_refusal_case_answers_every_request_it_can_afford(tmp_path: Path) -> None:
    """Issue 20's case: 8 threads × 3 requests, Ω = 900, each reserving ≈ 870 in the worst
    case but really costing far less; the first eight all hold leases at once."""
    from coreason_runtime.tensor import ScriptedTier, TensorRouter

    cage = BudgetCage(SQLiteLedgerBackend(tmp_path / "l.sqlite"))
    cage.set("wf", ceiling=900)
    together = threading.Barrier(8, timeout=60)
    calls = iter(range(10**6))
    lock = threading.Lock()

    def answer(request: object) -> str:
        with lock:
            n = next(calls)
        if n < 8:
            together.wait()  # eight requests in flight at once, each holding its lease
        return '{"n": 1}'

    tier = ScriptedTier("oracle", [answer], repeat_last=True)
    router = TensorRouter([tier], cage, max_attempts_per_tier=1)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    costs: list[float] = []

    def work() -> None:
        for _ in range(3):
            res = router.generate(schema, "one", workflow_id="wf", max_tokens=290, system="s")
            with lock:
                costs.append(res.cost)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(costs) == 24  # every request answered (a refusal would raise in its thread)
    prompt = cage.history("wf")[0].tokens_in
    assert prompt + 3 * 290 >= 870  # each would have reserved ≈ Ω under the worst-case scheme
    assert cage.spent("wf") == sum(costs) <= 900


def test_an_abort_ends_a_black_box_tiers_wait_for_room() -> None:
    from coreason_runtime import WorkflowAbortedError
    from coreason_runtime._controls import ControlledMeter, Controls

    cage = BudgetCage(lease_tokens=2, lease_wait=3600)
    cage.set("wf", ceiling=12)
    holder = cage.open("wf", tokens_in=0, max_out=2, tier="other")  # 6 of 12, never settled
    lease = cage.open("wf", tokens_in=0, max_out=5, tier="oracle")
    controls = Controls()
    meter = ControlledMeter(lease, controls.open("wf"))
    _produce(lease, 2)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            meter.check(tokens_out=1)
        except BaseException as e:  # reported by the assertion below
            raised.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    _until(lambda: cage.backend.releasable("wf") == holder.granted, "the wait for room")
    controls.abort("wf")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], WorkflowAbortedError)
    lease.settle()
    holder.settle()
    assert cage.spent("wf") == 6


# --- leases on tiers with weights of their own -----------------------------------------------


def test_a_lease_grows_by_the_tiers_own_weighted_chunk(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=4)
    cage.set_tier_weights("oracle", 2, 10)
    cage.set("wf", ceiling=1000)
    res = cage.open("wf", tokens_in=10, max_out=100, tier="oracle")
    assert res.granted == 2 * 10 + 10 * 4
    res.charge(tokens_in=10)
    _produce(res, 4)
    assert res.granted == 2 * 10 + 10 * 4  # covered: no growth yet
    _produce(res, 1)
    assert res.granted == 2 * 10 + 10 * 8  # one chunk at the oracle's w_out, not the cage's
    assert cage.get("wf").reserved == res.granted
    res.settle()
    ledger = cage.get("wf")
    assert (ledger.spent, ledger.reserved) == (2 * 10 + 10 * 5, 0)
    assert ledger.by_tier == {"oracle": 70}
    assert cage.history("wf")[-1].cost == 70  # the ledger keeps C, not tokens or weights


def test_a_weighted_lease_is_cut_off_at_exactly_what_its_weights_allow(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=2, lease_wait=3600)
    cage.set_tier_weights("oracle", weight_out=30)
    cage.set("wf", ceiling=100)
    res = cage.open("wf", tokens_in=10, max_out=50, tier="oracle")
    assert res.granted == 10 + 30 * 2
    assert res.max_out == 3  # (100 − 10 for the prompt) / 30
    res.charge(tokens_in=10)
    with pytest.raises(BudgetExceededError):
        _produce(res, 50)
    assert res.tokens_out == 3
    res.settle()
    assert cage.spent("wf") == 100
    assert cage.history("wf")[-1].note == "cut off at ceiling"


def test_a_weighted_lease_waits_for_room_a_default_lease_gives_back(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=16, lease_wait=60)
    cage.set_tier_weights("oracle", 1, 6)
    cage.set("wf", ceiling=100)
    holder = cage.open("wf", tokens_in=0, max_out=30, tier="local")  # holds 48 unused
    waiter = cage.open("wf", tokens_in=0, max_out=15, tier="oracle")  # holds 90
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _produce(waiter, 15)  # C=90 at the oracle's weights: needs the holder's room
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    _until(lambda: cage.backend.releasable("wf") == holder.granted, "the waiter to wait")
    _produce(holder, 2)
    holder.settle()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    waiter.settle()
    ledger = cage.get("wf")
    assert (ledger.spent, ledger.reserved) == (96, 0)
    assert ledger.by_tier == {"local": 6, "oracle": 90}


def test_correct_charges_a_servers_usage_at_the_tiers_weights(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage()
    cage.set_tier_weights("oracle", 2, 5)
    cage.set("wf", ceiling=1000)
    with cage.reserve("wf", tokens_in=10, max_out=50, tier="oracle") as res:
        res.charge(tokens_in=12, tokens_out=9)
        res.correct(tokens_in=11, tokens_out=7)
        assert res.consumed == 2 * 11 + 5 * 7
    ledger = cage.get("wf")
    assert (ledger.tokens_in, ledger.tokens_out, ledger.spent) == (11, 7, 57)


def test_a_worst_case_reservation_on_a_weighted_tier_reserves_at_its_weights(
    make_cage: Callable[..., BudgetCage],
) -> None:
    cage = make_cage(lease_tokens=None, lease_wait=0)
    cage.set_tier_weights("oracle", 2, 5)
    cage.set("wf", ceiling=1000)
    res = cage.open("wf", tokens_in=10, max_out=50, tier="oracle")
    assert res.granted == 2 * 10 + 5 * 50
    assert cage.get("wf").reserved == 270
    res.charge(tokens_in=10, tokens_out=50)
    with pytest.raises(BudgetExceededError):
        res.charge(tokens_out=1)  # nothing to grow: the worst case was reserved
    res.settle()
    assert cage.spent("wf") == 2 * 10 + 5 * 51
