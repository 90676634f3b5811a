"""TTC: prepare checks cheaply, commit runs once and only when needed, abort kills the run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from coreason_runtime import Coordinator, EventBus, EventType
from coreason_runtime._exceptions import (
    AuditLogError,
    NoConsumerError,
    PreconditionError,
    ToolRunError,
    TransactionAbortedError,
    UnknownTransactionError,
)
from coreason_runtime.txn import CommandTool, ToolTransactions, python_tool

SQUARE = python_tool("square", "result = inputs['x'] ** 2", check=lambda i: int(i["x"]))
SLEEPER = CommandTool("sleeper", lambda i: ["sh", "-c", f"sleep {i['s']} & wait; echo done"])


@pytest.fixture
def tt(tmp_path: Path) -> ToolTransactions:
    manager = ToolTransactions(tmp_path / "home", EventBus())
    yield manager  # type: ignore[misc]
    manager.close()


def _decisions(tt: ToolTransactions, txn_id: str) -> list[str]:
    return [d for _, d, _ in tt.log.decisions(txn_id)]


def test_commit_runs_the_tool_and_logs_each_decision(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 7}, est_cost=1.0, consumers=["lemma-3"])
    assert txn.commit(timeout=30) == 49
    assert _decisions(tt, txn.id) == ["prepared", "commit_started", "committed"]


def test_commit_is_idempotent(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 3}, est_cost=1.0, consumers=["a"])
    first = txn.commit(timeout=30)
    again = tt.get(txn.id).commit(timeout=30)
    assert first == again == 9
    assert _decisions(tt, txn.id).count("commit_started") == 1


def test_empty_consumer_list_raises_no_consumer(tt: ToolTransactions) -> None:
    with pytest.raises(NoConsumerError):
        tt.prepare(SQUARE, {"x": 1}, est_cost=1.0, consumers=[])


def test_blank_consumer_names_raise_no_consumer(tt: ToolTransactions) -> None:
    with pytest.raises(NoConsumerError):
        tt.prepare(SQUARE, {"x": 1}, est_cost=1.0, consumers=["", "  "])


def test_failed_precondition_is_refused_and_logged(tt: ToolTransactions) -> None:
    with pytest.raises(PreconditionError):
        tt.prepare(SQUARE, {"x": "seven"}, est_cost=1.0, consumers=["a"], txn_id="bad")
    assert _decisions(tt, "bad") == ["refused"]
    with pytest.raises(UnknownTransactionError):
        tt.log.get("bad")


def test_cost_above_the_tool_bound_is_refused(tt: ToolTransactions) -> None:
    bounded = CommandTool("bounded", lambda i: ["true"], max_cost=10.0)
    with pytest.raises(PreconditionError):
        tt.prepare(bounded, {}, est_cost=11.0, consumers=["a"])


def test_abort_before_commit_never_runs(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 2}, est_cost=1.0, consumers=["a"])
    assert txn.abort("changed my mind")
    assert not (tt.runs / f"{txn.id}.out").exists()
    assert tt.log.get(txn.id)["cpu_s"] == 0.0


def test_commit_after_abort_raises_transaction_aborted(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 2}, est_cost=1.0, consumers=["a"])
    txn.abort()
    with pytest.raises(TransactionAbortedError):
        txn.commit()


def test_commit_without_a_live_consumer_aborts_instead_of_running(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 2}, est_cost=1.0, consumers=["a"])
    tt.drop_consumer("a")
    with pytest.raises(TransactionAbortedError):
        txn.commit()
    assert "commit_started" not in _decisions(tt, txn.id)


def test_plan_change_during_the_run_kills_its_process_group(tt: ToolTransactions) -> None:
    txn = tt.prepare(SLEEPER, {"s": 30}, est_cost=1.0, consumers=["sim-1"])
    future = txn.start()
    time.sleep(0.2)
    pid = tt.log.get(txn.id)["run_pid"]
    group = [p.pid for p in psutil.Process(pid).children(recursive=True)] + [pid]
    assert tt.drop_consumer("sim-1") == [txn.id]
    with pytest.raises(TransactionAbortedError):
        future.result(timeout=10)

    def alive() -> list[int]:
        out = []
        for p in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously: give it a moment
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()
    assert tt.log.get(txn.id)["state"] == "aborted"


def test_a_call_with_another_live_consumer_survives_one_dropping(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 4}, est_cost=1.0, consumers=["a", "b"])
    assert tt.drop_consumer("a") == []
    assert txn.commit(timeout=30) == 16


def test_a_new_prepare_naming_a_dropped_consumer_is_needed_again(tt: ToolTransactions) -> None:
    tt.prepare(SQUARE, {"x": 1}, est_cost=1.0, consumers=["solve"]).abort()
    tt.drop_consumer("solve")  # the old plan's task went away
    txn = tt.prepare(SQUARE, {"x": 6}, est_cost=1.0, consumers=["solve"])  # a new plan
    assert txn.commit(timeout=30) == 36


def test_close_with_a_run_in_flight_kills_it_and_records_the_abort(tmp_path: Path) -> None:
    manager = ToolTransactions(tmp_path / "home", EventBus())
    txn = manager.prepare(SLEEPER, {"s": 30}, est_cost=1.0, consumers=["a"])
    future = txn.start()
    pid = manager.log.get(txn.id)["run_pid"]
    manager.close()
    with pytest.raises(TransactionAbortedError):
        future.result(timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    reopened = ToolTransactions(tmp_path / "home", recover=False)
    try:
        assert _decisions(reopened, txn.id)[-2:] == ["aborted", "reaped"]
    finally:
        reopened.close()


def test_failing_run_raises_tool_run_error_with_status(tt: ToolTransactions) -> None:
    failing = CommandTool("failing", lambda i: ["sh", "-c", "echo oops >&2; exit 3"])
    txn = tt.prepare(failing, {}, est_cost=1.0, consumers=["a"])
    with pytest.raises(ToolRunError) as info:
        txn.commit(timeout=30)
    assert info.value.returncode == 3
    assert tt.log.get(txn.id)["state"] == "failed"


def test_aborted_scheduler_task_drops_its_consumer(tt: ToolTransactions) -> None:
    txn = tt.prepare(SQUARE, {"x": 5}, est_cost=1.0, consumers=["proof/lemma"])
    tt.bus.emit(
        EventType.TASK_ABORTED, source="sched", dag_id="proof", task="lemma", reason="replanned"
    )
    assert tt.log.get(txn.id)["state"] == "aborted"


def test_events_cover_prepare_commit_and_abort(tt: ToolTransactions) -> None:
    tt.prepare(SQUARE, {"x": 1}, est_cost=1.0, consumers=["a"]).commit(timeout=30)
    tt.prepare(SQUARE, {"x": 1}, est_cost=1.0, consumers=["b"]).abort()
    kinds = [e.type for e in tt.bus.history(["txn"])]
    assert kinds.count(EventType.TXN_PREPARED) == 2
    assert EventType.TXN_COMMITTED in kinds
    assert EventType.TXN_ABORTED in kinds


def test_for_runtime_logs_in_the_runtime_home_and_publishes_on_its_bus(home: Path) -> None:
    with Coordinator() as rt:
        tt = ToolTransactions.for_runtime(rt)
        seen: list[str] = []
        rt.bus.subscribe(lambda e: seen.append(e.type.value), ["txn"])
        tt.prepare(SQUARE, {"x": 2}, est_cost=1.0, consumers=["a"]).abort()
        tt.close()
    assert (rt.home / "txn" / "audit.sqlite3").exists()
    assert seen == ["txn.prepared", "txn.aborted"]


_COORDINATOR = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from coreason_runtime.txn import CommandTool, ToolTransactions
    tt = ToolTransactions(Path(sys.argv[1]))
    slow = CommandTool("slow", lambda i: ["sh", "-c", "sleep 60 & wait"])
    quick = CommandTool("quick", lambda i: ["sh", "-c", "sleep 0.3; echo 42"])
    undecided = tt.prepare(slow, {}, est_cost=1, consumers=["a"])
    running = tt.prepare(slow, {}, est_cost=1, consumers=["b"])
    finishing = tt.prepare(quick, {}, est_cost=1, consumers=["c"])
    running.start(); finishing.start()
    time.sleep(0.2)
    pid = tt.log.get(running.id)["run_pid"]
    print(json.dumps([undecided.id, running.id, finishing.id, pid]), flush=True)
    time.sleep(60)
""")


def test_restart_after_kill_9_resolves_undecided_and_kills_orphans(tmp_path: Path) -> None:
    home = tmp_path / "home"
    coord = subprocess.Popen(
        [sys.executable, "-c", _COORDINATOR, str(home)], stdout=subprocess.PIPE, text=True
    )
    assert coord.stdout is not None
    undecided, running, finishing, pid = json.loads(coord.stdout.readline())
    os.kill(coord.pid, signal.SIGKILL)
    coord.wait()
    coord.stdout.close()
    rc_file = home / "txn" / "runs" / f"{finishing}.rc"
    deadline = time.monotonic() + 30
    while not rc_file.exists() and time.monotonic() < deadline:  # the quick run finishes
        time.sleep(0.05)  # while no coordinator is alive
    assert psutil.pid_exists(pid)
    tt = ToolTransactions(home)
    try:
        report = tt.last_recovery
        assert report.aborted == [undecided]
        assert report.interrupted == [running]
        assert report.completed == [finishing]
        assert report.killed_pids == [pid]
        assert not psutil.pid_exists(pid)
        tt.register(CommandTool("quick", lambda i: ["false"], parse=lambda b: int(b)))
        tt.register(CommandTool("slow", lambda i: ["false"]))
        assert tt.get(finishing).commit(timeout=5) == 42
        with pytest.raises(TransactionAbortedError):
            tt.get(undecided).commit()
    finally:
        tt.close()


def test_reading_a_closed_audit_log_is_a_typed_error(tmp_path: Path) -> None:
    manager = ToolTransactions(tmp_path / "home", EventBus())
    txn = manager.prepare(SQUARE, {"x": 1}, est_cost=1.0, consumers=["a"])
    manager.close()
    with pytest.raises(AuditLogError):
        manager.log.get(txn.id)
    with pytest.raises(AuditLogError):
        manager.log.decisions()
