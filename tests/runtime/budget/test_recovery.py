"""Crash recovery of reservations: each orphan is charged once, and only orphans are."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from coreason_runtime.budget import BudgetCage, RedisLedgerBackend, SQLiteLedgerBackend
from coreason_runtime.budget._models import Charge, LedgerBackend, ReservationRecord


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _orphan(
    backend: LedgerBackend, pid: int, created: float | None = None, tokens: int = 50
) -> ReservationRecord:
    """A reservation of process ``pid`` checkpointed at C = 5·tokens, never settled."""
    record = ReservationRecord(
        reservation_id=uuid.uuid4().hex,
        workflow_id="wf",
        tier="local",
        granted=1000.0,
        pid=pid,
        host=socket.gethostname(),
        created=time.time() if created is None else created,
    )
    granted = backend.reserve(record, minimum=1.0)
    record = record.model_copy(
        update={"granted": granted, "tokens_in": 2 * tokens, "tokens_out": tokens}
    )
    record = record.model_copy(update={"consumed": 2.0 * tokens + 3.0 * tokens})
    backend.checkpoint(record)
    return record


def _charge(record: ReservationRecord) -> Charge:
    return Charge(
        workflow_id=record.workflow_id,
        tier=record.tier,
        tokens_in=record.tokens_in,
        tokens_out=record.tokens_out,
        cost=record.consumed,
        ts=time.time(),
        reservation_id=record.reservation_id,
        note="recovered",
    )


def _sqlite(tmp_path: Path) -> SQLiteLedgerBackend:
    backend = SQLiteLedgerBackend(tmp_path / "ledger.sqlite")
    backend.set_ceiling("wf", 10_000.0)
    return backend


def test_two_recoveries_that_both_saw_an_orphan_charge_it_once(tmp_path: Path) -> None:
    first = _sqlite(tmp_path)
    second = SQLiteLedgerBackend(tmp_path / "ledger.sqlite")
    record = _orphan(first, _dead_pid())
    # the interleaving that double-charged: both list the orphan, then both settle it
    seen = [first.orphans(), second.orphans()]
    assert [[r.reservation_id for r in s] for s in seen] == [[record.reservation_id]] * 2
    first.settle(seen[0][0], _charge(seen[0][0]))
    second.settle(seen[1][0], _charge(seen[1][0]))
    ledger = first.get("wf")
    assert ledger is not None
    assert (ledger.spent, ledger.reserved, ledger.requests) == (250.0, 0.0, 1)
    assert len(first.history("wf")) == 1


def test_coordinators_starting_together_after_a_crash_charge_each_orphan_once(
    tmp_path: Path,
) -> None:
    for trial in range(10):
        path = tmp_path / f"ledger-{trial}.sqlite"
        backend = SQLiteLedgerBackend(path)
        backend.set_ceiling("wf", 10_000.0)
        for _ in range(3):
            _orphan(backend, _dead_pid())
        start = threading.Barrier(3)

        def recover(path: Path = path, start: threading.Barrier = start) -> None:
            store = SQLiteLedgerBackend(path)
            start.wait(10)
            BudgetCage(store).close()

        threads = [threading.Thread(target=recover) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        ledger = backend.get("wf")
        assert ledger is not None
        assert (ledger.spent, ledger.reserved, ledger.requests) == (750.0, 0.0, 3), trial
        backend.close()


def test_a_dead_but_unreaped_owner_is_gone(tmp_path: Path) -> None:
    backend = _sqlite(tmp_path)
    zombie = subprocess.Popen(["true"])  # exits at once; not waited for, so a zombie
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        record = _orphan(backend, zombie.pid)
        assert [r.reservation_id for r in backend.orphans()] == [record.reservation_id]
        BudgetCage(backend)
        ledger = backend.get("wf")
        assert ledger is not None
        assert (ledger.spent, ledger.reserved) == (250.0, 0.0)
    finally:
        zombie.wait()


def test_a_pid_reused_by_a_later_process_is_gone(tmp_path: Path) -> None:
    backend = _sqlite(tmp_path)
    later = subprocess.Popen(["sleep", "30"])
    try:
        # the reservation was made a minute before this (live) process with its pid started
        record = _orphan(backend, later.pid, created=time.time() - 60)
        assert [r.reservation_id for r in backend.orphans()] == [record.reservation_id]
    finally:
        later.kill()
        later.wait()


def test_a_live_owner_keeps_its_reservation(tmp_path: Path) -> None:
    backend = _sqlite(tmp_path)
    owner = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.05)
        _orphan(backend, owner.pid)
        assert backend.orphans() == []
        BudgetCage(backend)
        ledger = backend.get("wf")
        assert ledger is not None
        assert (ledger.spent, ledger.reserved) == (0.0, 1000.0)
    finally:
        owner.kill()
        owner.wait()


def test_a_charge_without_a_reservation_is_still_recorded(tmp_path: Path) -> None:
    cage = BudgetCage(_sqlite(tmp_path))
    cage.record("wf", "human", tokens_in=3, tokens_out=1)
    cage.record("wf", "human", tokens_in=3, tokens_out=1)
    assert cage.spent("wf") == 12.0


@pytest.mark.redis
def test_redis_settles_a_reservation_once_and_a_checkpoint_does_not_revive_it(
    redis_url: str,
) -> None:
    backend = RedisLedgerBackend(redis_url)
    backend.set_ceiling("wf", 10_000.0)
    record = _orphan(backend, _dead_pid(), created=time.time() - 7200)
    assert [r.reservation_id for r in backend.orphans()] == [record.reservation_id]
    backend.settle(record, _charge(record))
    backend.settle(record, _charge(record))  # a second recovery that listed it too
    backend.checkpoint(record)  # its owner's last checkpoint, arriving late
    ledger = backend.get("wf")
    assert ledger is not None
    assert (ledger.spent, ledger.reserved, ledger.requests) == (250.0, 0.0, 1)
    assert backend.orphans() == []
    cage = BudgetCage(backend)
    cage.record("wf", "human", tokens_in=3, tokens_out=1)
    assert cage.spent("wf") == 256.0
