"""TTC: two-phase tool calls. prepare checks cheaply; commit runs only if a consumer needs it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from coreason_runtime._events import Event, EventBus, EventType
from coreason_runtime._exceptions import (
    NoConsumerError,
    ToolRunError,
    TransactionAbortedError,
    TransactionError,
    TransactionStateError,
    UnknownTransactionError,
)
from coreason_runtime._payloads import TaskAborted
from coreason_runtime.txn._log import AuditLog, TxnRow
from coreason_runtime.txn._tool import Tool

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["RecoveryReport", "ToolTransactions", "Transaction"]

# The heavy run waits on a gate pipe until its pid and start time are durable in the log; if
# the coordinator dies first the pipe closes and the run exits (125) without doing anything.
# Its exit status goes to a file so a restarted coordinator learns how a run it missed ended.
_GATE = (
    "read -r go || exit 125\n"
    "exec 0</dev/null\n"
    '"$@"\n'
    "rc=$?\n"
    'printf %s "$rc" > "$COREASON_RC_FILE.tmp" && mv "$COREASON_RC_FILE.tmp" "$COREASON_RC_FILE"\n'
    'exit "$rc"\n'
)

OPEN_STATES = ("prepared", "running")


def _identity(pid: int) -> float | None:
    """A process's start time (pid + start time identify it across pid reuse)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int | None, start: float | None) -> bool:
    if pid is None or start is None:
        return False
    now = _identity(pid)
    return now is not None and abs(now - start) < 0.05


_TICK = os.sysconf("SC_CLK_TCK")


def _group_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, read from /proc (no full process scan)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
            with open(f"/proc/{p}/task/{p}/children", "rb") as f:
                stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass
class RecoveryReport:
    """What a restart found: undecided calls aborted, interrupted runs killed or completed."""

    aborted: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)


class Transaction:
    """One two-phase tool call. ``commit()`` runs it (once), ``abort()`` cancels it."""

    def __init__(
        self,
        manager: ToolTransactions,
        txn_id: str,
        tool: Tool,
        inputs: Mapping[str, Any],
        est_cost: float,
        consumers: list[str],
        workflow_id: str | None,
    ) -> None:
        self.manager = manager
        self.id = txn_id
        self.tool = tool
        self.inputs = dict(inputs)
        self.est_cost = est_cost
        self.consumers = consumers
        self.workflow_id = workflow_id
        self._future: concurrent.futures.Future[Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self._abort_reason: str | None = None
        self._cpu_at_kill = 0.0
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """prepared, running, committed, failed, aborted or interrupted (from the log)."""
        return str(self.manager.log.get(self.id)["state"])

    def commit(self, timeout: float | None = None) -> Any:
        """Run the heavy call if a consumer still needs it, and return its result.

        Idempotent: a committed call returns its recorded result without running again.
        Raises :class:`TransactionAbortedError` if it was aborted (before or during the run,
        or because no consumer needs it any more) and :class:`ToolRunError` if it failed.
        """
        return self.start().result(timeout)

    async def commit_async(self) -> Any:
        """:meth:`commit` for coroutines."""
        return await asyncio.wrap_future(self.start())

    def start(self) -> concurrent.futures.Future[Any]:
        """Begin the commit without waiting; the future holds the result."""
        with self._lock:
            if self._future is not None:
                return self._future
            row = self.manager.log.get(self.id)
            state = row["state"]
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            if state == "committed":
                fut.set_result(self.tool.parse(row["result"].encode()))
                return fut
            if state == "aborted":
                msg = f"transaction {self.id} was aborted: {row['error']}"
                raise TransactionAbortedError(msg, workflow_id=self.workflow_id)
            if state == "failed":
                msg = f"transaction {self.id} failed: {row['error']}"
                raise TransactionStateError(msg, workflow_id=self.workflow_id)
            if state == "running":
                msg = f"transaction {self.id} is running under another coordinator"
                raise TransactionStateError(msg, workflow_id=self.workflow_id)
            if not self.manager.needed(self):
                self.manager._abort_prepared(self, "no consumer needs the result at commit")
                msg = f"transaction {self.id} aborted: no consumer needs it any more"
                raise TransactionAbortedError(msg, workflow_id=self.workflow_id)
            self._future = fut
        self.manager._launch(self)
        return fut

    def abort(self, reason: str = "aborted by caller") -> bool:
        """Cancel: free before the run, kills the run's process group during it.

        Returns ``True`` if this call aborted it, ``False`` if it had already ended (a
        committed call stays committed).
        """
        return self.manager._abort(self, reason)

    def __repr__(self) -> str:
        return f"<Transaction {self.id} tool={self.tool.name!r} consumers={self.consumers}>"


class ToolTransactions:
    """Prepares, commits and aborts heavy tool calls, logging every decision durably.

    Heavy runs are child processes in their own process group, recorded (pid + start time)
    in the audit log before they start; a restarted coordinator kills any it finds still
    running (:meth:`recover`, called on construction).

    Parameters
    ----------
    home:
        Where the audit log (``txn/audit.sqlite3``) and run outputs live.
    bus:
        Where ``TXN_*`` events go; ``TASK_ABORTED`` events on it drop consumers.
    synchronous:
        SQLite's ``synchronous`` in WAL mode. ``"NORMAL"`` (default) survives any crash of
        the coordinator (kill -9 included) and costs no fsync per decision; ``"FULL"`` also
        survives a power cut, at an fsync per decision. A power cut kills the heavy runs
        too, so neither mode can leave an orphan.
    """

    def __init__(
        self,
        home: Path,
        bus: EventBus | None = None,
        *,
        recover: bool = True,
        synchronous: str = "NORMAL",
    ) -> None:
        self.home = Path(home)
        self.dir = self.home / "txn"
        self.runs = self.dir / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.log = AuditLog(self.dir / "audit.sqlite3", synchronous=synchronous)
        self.bus = bus or EventBus()
        self.tools: dict[str, Tool] = {}
        self._open: dict[str, Transaction] = {}
        self._dropped: set[str] = set()
        self._lock = threading.RLock()
        self._me = (os.getpid(), _identity(os.getpid()) or 0.0)
        self.last_recovery = self.recover() if recover else RecoveryReport()
        self._sub = self.bus.subscribe(self._on_task_event, [EventType.TASK_ABORTED])

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> ToolTransactions:
        """The transactions of a Coordinator: log in ``rt.home``, events on ``rt.bus``."""
        return cls(rt.home, rt.bus)

    def register(self, tool: Tool) -> Tool:
        self.tools[tool.name] = tool
        return tool

    # --- prepare -----------------------------------------------------------------------------

    def prepare(
        self,
        tool: Tool | str,
        inputs: Mapping[str, Any],
        *,
        est_cost: float,
        consumers: Iterable[str],
        workflow_id: str | None = None,
        txn_id: str | None = None,
    ) -> Transaction:
        """Check preconditions and bounds without the heavy work; log the decision.

        Raises :class:`NoConsumerError` if ``consumers`` names nothing, and
        :class:`PreconditionError` if the tool's check or cost bound refuses.
        """
        if isinstance(tool, str):
            if tool not in self.tools:
                msg = f"no tool registered as {tool!r}"
                raise UnknownTransactionError(msg, workflow_id=workflow_id)
            tool = self.tools[tool]
        else:
            self.tools.setdefault(tool.name, tool)
        names = [c for c in consumers] if not isinstance(consumers, str) else [consumers]
        if not names or not all(isinstance(c, str) and c.strip() for c in names):
            msg = f"{tool.name}: the consumer list {names!r} names nothing"
            raise NoConsumerError(msg, workflow_id=workflow_id)
        txn_id = txn_id or uuid.uuid4().hex[:16]
        try:
            tool.check(inputs, est_cost)
        except TransactionError as e:
            self.log.note(txn_id, "refused", tool=tool.name, error=str(e))
            raise
        try:
            inputs_json = json.dumps(dict(inputs), default=str)
        except (TypeError, ValueError) as e:
            msg = f"{tool.name}: inputs are not serialisable: {e}"
            raise TransactionError(msg, workflow_id=workflow_id) from e
        now = time.time()
        self.log.insert(
            {
                "id": txn_id,
                "tool": tool.name,
                "workflow_id": workflow_id,
                "inputs": inputs_json,
                "est_cost": est_cost,
                "consumers": json.dumps(names),
                "state": "prepared",
                "owner_pid": self._me[0],
                "owner_start": self._me[1],
                "created": now,
                "updated": now,
            },
            "prepared",
            est_cost=est_cost,
            consumers=names,
        )
        txn = Transaction(self, txn_id, tool, inputs, est_cost, names, workflow_id)
        with self._lock:
            self._open[txn_id] = txn
            # naming a dropped consumer again declares it live: a new plan may reuse task ids
            self._dropped.difference_update(names)
        self._emit(EventType.TXN_PREPARED, txn, est_cost=est_cost, consumers=names)
        return txn

    # --- consumers and plan changes ----------------------------------------------------------

    def needed(self, txn: Transaction) -> bool:
        with self._lock:
            return any(c not in self._dropped for c in txn.consumers)

    def drop_consumer(self, consumer: str, *, reason: str = "plan changed") -> list[str]:
        """A consumer no longer needs results: abort every call only it was waiting for.

        Returns the ids of the transactions aborted.
        """
        with self._lock:
            self._dropped.add(consumer)
            victims = [
                t for t in self._open.values() if consumer in t.consumers and not self.needed(t)
            ]
        return [t.id for t in victims if self._abort(t, f"{reason}: {consumer} dropped")]

    def _on_task_event(self, event: Event) -> None:
        if isinstance(event.data, TaskAborted):
            task, dag = event.data.task, event.data.dag_id
            self.drop_consumer(task, reason="task aborted")
            self.drop_consumer(f"{dag}/{task}", reason="task aborted")

    # --- commit ------------------------------------------------------------------------------

    def _launch(self, txn: Transaction) -> None:
        out_path = self.runs / f"{txn.id}.out"
        rc_path = self.runs / f"{txn.id}.rc"
        rc_path.unlink(missing_ok=True)
        gate_r, gate_w = os.pipe()
        env = {**os.environ, "COREASON_RC_FILE": str(rc_path), "COREASON_TXN_ID": txn.id}
        fut = txn._future
        assert fut is not None
        try:
            with open(out_path, "wb") as out, open(self.runs / f"{txn.id}.err", "wb") as err:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _GATE, "coreason-txn", *txn.tool.command(txn.inputs)],
                    stdin=gate_r,
                    stdout=out,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                )
        except OSError as e:
            os.close(gate_w)
            self._abort_prepared(txn, f"could not start: {e}", state="failed")
            fut.set_exception(ToolRunError(f"{txn.id}: could not start: {e}"))
            return
        finally:
            os.close(gate_r)
        start = _identity(proc.pid)
        with txn._lock:
            applied = self.log.record(
                txn.id,
                "commit_started",
                expect=("prepared", "interrupted"),
                state="running",
                run_pid=proc.pid,
                run_start=start,
                owner_pid=self._me[0],
                owner_start=self._me[1],
            )
            if applied:
                txn._proc = proc
        if not applied:  # aborted between the check and the launch: never open the gate
            os.close(gate_w)
            proc.wait()
            fut.set_exception(
                TransactionAbortedError(
                    f"transaction {txn.id} was aborted before its run started",
                    workflow_id=txn.workflow_id,
                )
            )
            return
        self._emit(EventType.TXN_COMMITTED, txn, phase="running", pid=proc.pid, cpu_s=None)
        os.write(gate_w, b"go\n")
        os.close(gate_w)
        txn._watcher = threading.Thread(
            target=self._watch, args=(txn, proc), daemon=True, name=f"txn-{txn.id}"
        )
        txn._watcher.start()

    def _watch(self, txn: Transaction, proc: subprocess.Popen[bytes]) -> None:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._settle(txn, proc, cpu_before_kill=usage.ru_utime + usage.ru_stime)

    def _settle(
        self, txn: Transaction, proc: subprocess.Popen[bytes], *, cpu_before_kill: float
    ) -> None:
        """Record how the run ended and resolve the commit's future."""
        fut = txn._future
        assert fut is not None
        rc = proc.returncode
        cpu = max(cpu_before_kill, txn._cpu_at_kill)
        gate_closed = rc == 125 and not (self.runs / f"{txn.id}.rc").exists()
        if (txn._abort_reason is not None and rc != 0) or gate_closed:
            reason = txn._abort_reason or "aborted before the gate opened"
            if txn._abort_reason is None:
                self.log.record(
                    txn.id,
                    "aborted",
                    state="aborted",
                    returncode=rc,
                    cpu_s=cpu,
                    error=reason,
                    during_run=True,
                )
                self._emit(
                    EventType.TXN_ABORTED,
                    txn,
                    reason=reason,
                    during_run=True,
                    failed=False,
                    cpu_s=cpu,
                )
            else:
                self.log.record(txn.id, "reaped", returncode=rc)
            self._close(txn)
            fut.set_exception(
                TransactionAbortedError(
                    f"transaction {txn.id} aborted during its run: {reason}",
                    workflow_id=txn.workflow_id,
                )
            )
            return
        stdout = (self.runs / f"{txn.id}.out").read_bytes()
        if rc == 0:
            try:
                value = txn.tool.parse(stdout)
            except Exception as e:  # the run happened; its output is the tool's problem
                rc_error = f"output could not be parsed: {type(e).__name__}: {e}"
            else:
                late: dict[str, Any] = {"finished_before_abort": True} if txn._abort_reason else {}
                self.log.record(
                    txn.id,
                    "committed",
                    state="committed",
                    returncode=0,
                    cpu_s=cpu,
                    result=stdout.decode(errors="replace"),
                    **late,
                )
                self._close(txn)
                self._emit(EventType.TXN_COMMITTED, txn, phase="done", pid=proc.pid, cpu_s=cpu)
                fut.set_result(value)
                return
        else:
            tail = (self.runs / f"{txn.id}.err").read_bytes()[-500:].decode(errors="replace")
            rc_error = f"exit status {rc}: {tail}"
        self.log.record(txn.id, "failed", state="failed", returncode=rc, cpu_s=cpu, error=rc_error)
        self._close(txn)
        self._emit(
            EventType.TXN_ABORTED, txn, reason=rc_error, during_run=True, failed=True, cpu_s=cpu
        )
        fut.set_exception(
            ToolRunError(
                f"transaction {txn.id} failed: {rc_error}",
                returncode=rc,
                workflow_id=txn.workflow_id,
            )
        )

    # --- abort -------------------------------------------------------------------------------

    def _abort(self, txn: Transaction, reason: str) -> bool:
        with txn._lock:
            proc = txn._proc
            if proc is None:
                return self._abort_prepared(txn, reason)
            if proc.returncode is not None or txn._abort_reason is not None:
                return False
            try:  # already exited (not yet reaped)? then it ran to the end: nothing to abort
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    return False
            except ChildProcessError:
                return False
            txn._abort_reason = reason
            txn._cpu_at_kill = _group_cpu(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            # the group is killed (SIGKILL cannot be caught); log it now, the watcher reaps
            self.log.record(
                txn.id,
                "aborted",
                expect=("running",),
                state="aborted",
                cpu_s=txn._cpu_at_kill,
                error=reason,
                during_run=True,
            )
        self._emit(
            EventType.TXN_ABORTED,
            txn,
            reason=reason,
            during_run=True,
            failed=False,
            cpu_s=txn._cpu_at_kill,
        )
        return True

    def _abort_prepared(self, txn: Transaction, reason: str, *, state: str = "aborted") -> bool:
        if not self.log.record(
            txn.id,
            state,
            expect=("prepared", "interrupted"),
            state=state,
            error=reason,
            during_run=False,
            cpu_s=0.0,
        ):
            return False
        self._close(txn)
        self._emit(
            EventType.TXN_ABORTED, txn, reason=reason, during_run=False, failed=False, cpu_s=0.0
        )
        return True

    def _close(self, txn: Transaction) -> None:
        with self._lock:
            self._open.pop(txn.id, None)

    # --- lookup and recovery -----------------------------------------------------------------

    def get(self, txn_id: str) -> Transaction:
        """The transaction with this id (from memory, or rebuilt from the audit log)."""
        with self._lock:
            if txn_id in self._open:
                return self._open[txn_id]
        row = self.log.get(txn_id)
        tool = self.tools.get(row["tool"])
        if tool is None:
            msg = f"transaction {txn_id} uses tool {row['tool']!r}, which is not registered"
            raise UnknownTransactionError(msg)
        return Transaction(
            self,
            txn_id,
            tool,
            json.loads(row["inputs"]),
            row["est_cost"],
            json.loads(row["consumers"]),
            row["workflow_id"],
        )

    def recover(self) -> RecoveryReport:
        """Resolve what a dead coordinator left open: presumed abort, kill orphaned runs."""
        report = RecoveryReport()
        for row in self.log.in_states(*OPEN_STATES):
            if _alive(row["owner_pid"], row["owner_start"]):
                continue  # a live coordinator (maybe this one) owns it
            if row["state"] == "prepared":
                if self.log.record(
                    row["id"],
                    "aborted",
                    expect=("prepared",),
                    state="aborted",
                    error="recovered: coordinator died before deciding",
                    recovered=True,
                ):
                    report.aborted.append(row["id"])
                continue
            self._recover_run(row, report)
        if report.aborted or report.interrupted or report.completed:
            self.bus.emit(
                EventType.TXN_RECOVERED,
                source="txn",
                aborted=report.aborted,
                interrupted=report.interrupted,
                completed=report.completed,
                killed_pids=report.killed_pids,
            )
        return report

    def _recover_run(self, row: TxnRow, report: RecoveryReport) -> None:
        pid, start = row["run_pid"], row["run_start"]
        cpu = 0.0
        if _alive(pid, start):
            cpu = _group_cpu(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            report.killed_pids.append(pid)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=5)
        rc_path = self.runs / f"{row['id']}.rc"
        rc = (
            int(rc_path.read_text()) if rc_path.exists() and pid not in report.killed_pids else None
        )
        if rc == 0:
            out = (self.runs / f"{row['id']}.out").read_bytes().decode(errors="replace")
            self.log.record(
                row["id"], "committed", state="committed", returncode=0, result=out, recovered=True
            )
            report.completed.append(row["id"])
            return
        self.log.record(
            row["id"],
            "interrupted",
            state="interrupted",
            returncode=rc,
            cpu_s=cpu,
            error="coordinator died during the run",
            recovered=True,
            killed=pid in report.killed_pids,
        )
        report.interrupted.append(row["id"])

    def close(self) -> None:
        """Abort every open call (killing running ones), wait for their runs to be reaped and
        recorded, and close the log."""
        self._sub.unsubscribe()
        with self._lock:
            open_txns = list(self._open.values())
        for t in open_txns:
            t.abort("runtime closing")
        # the watchers still write how each run ended: the log must outlive them
        for t in open_txns:
            if t._watcher is not None:
                t._watcher.join(timeout=10)
        self.log.close()

    def _emit(self, type: EventType, txn: Transaction, **data: Any) -> None:
        self.bus.emit(
            type,
            workflow_id=txn.workflow_id,
            source="txn",
            txn_id=txn.id,
            tool=txn.tool.name,
            **data,
        )
