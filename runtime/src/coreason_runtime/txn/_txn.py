"""TTC: two-phase tool calls. prepare checks cheaply; commit runs only if a consumer needs it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from coreason_runtime.txn._log import AuditLog
from coreason_runtime.txn._proc import GATE_CLOSED, GatedRun, identity
from coreason_runtime.txn._recover import RecoveryReport, recover_open
from coreason_runtime.txn._tool import Tool

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["RecoveryReport", "ToolTransactions", "Transaction"]


class Transaction:
    """One two-phase tool call. ``commit()`` runs it (once), ``abort()`` cancels it.

    It owns its heavy run: the launch, the watcher that records how the run ended, and the
    kill of an abort. Its manager keeps the audit log, the run folder and the consumers.
    """

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
        self._run: GatedRun | None = None
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
                self._abort_prepared("no consumer needs the result at commit")
                msg = f"transaction {self.id} aborted: no consumer needs it any more"
                raise TransactionAbortedError(msg, workflow_id=self.workflow_id)
            self._future = fut
        self._launch(fut)
        return fut

    def abort(self, reason: str = "aborted by caller") -> bool:
        """Cancel: free before the run, kills the run's process group during it.

        Returns ``True`` if this call aborted it, ``False`` if it had already ended (a
        committed call stays committed).
        """
        with self._lock:
            run = self._run
            if run is None:
                return self._abort_prepared(reason)
            # already exited (reaped or not)? then it ran to the end: nothing to abort
            if self._abort_reason is not None or run.exited():
                return False
            self._abort_reason = reason
            self._cpu_at_kill = run.kill()
            # the group is killed (SIGKILL cannot be caught); log it now, the watcher reaps
            self.manager.log.record(
                self.id,
                "aborted",
                expect=("running",),
                state="aborted",
                cpu_s=self._cpu_at_kill,
                error=reason,
                during_run=True,
            )
        _emit(
            self,
            EventType.TXN_ABORTED,
            reason=reason,
            during_run=True,
            failed=False,
            cpu_s=self._cpu_at_kill,
        )
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait until the run (if one started) has been reaped and its end recorded."""
        if self._watcher is not None:
            self._watcher.join(timeout)

    def __repr__(self) -> str:
        return f"<Transaction {self.id} tool={self.tool.name!r} consumers={self.consumers}>"

    # --- the run -----------------------------------------------------------------------------

    def _path(self, suffix: str) -> Path:
        return self.manager.runs / f"{self.id}.{suffix}"

    def _launch(self, fut: concurrent.futures.Future[Any]) -> None:
        try:
            run = GatedRun.spawn(
                self.tool.command(self.inputs),
                out=self._path("out"),
                err=self._path("err"),
                rc_file=self._path("rc"),
                env={"COREASON_TXN_ID": self.id},
            )
        except OSError as e:
            self._abort_prepared(f"could not start: {e}", state="failed")
            fut.set_exception(ToolRunError(f"{self.id}: could not start: {e}"))
            return
        owner_pid, owner_start = self.manager.owner
        with self._lock:
            applied = self.manager.log.record(
                self.id,
                "commit_started",
                expect=("prepared", "interrupted"),
                state="running",
                run_pid=run.pid,
                run_start=run.start,
                owner_pid=owner_pid,
                owner_start=owner_start,
            )
            if applied:
                self._run = run
        if not applied:  # aborted between the check and the launch: never open the gate
            run.cancel()
            fut.set_exception(
                TransactionAbortedError(
                    f"transaction {self.id} was aborted before its run started",
                    workflow_id=self.workflow_id,
                )
            )
            return
        _emit(self, EventType.TXN_COMMITTED, phase="running", pid=run.pid, cpu_s=None)
        run.open_gate()
        self._watcher = threading.Thread(
            target=self._watch, args=(fut, run), daemon=True, name=f"txn-{self.id}"
        )
        self._watcher.start()

    def _watch(self, fut: concurrent.futures.Future[Any], run: GatedRun) -> None:
        cpu = run.wait()
        rc = run.returncode
        assert rc is not None
        cpu = max(cpu, self._cpu_at_kill)
        gate_closed = rc == GATE_CLOSED and not self._path("rc").exists()
        try:
            if (self._abort_reason is not None and rc != 0) or gate_closed:
                self._settle_aborted(rc, cpu)
            else:
                fut.set_result(self._settle_ended(rc, cpu, run.pid))
        except (TransactionAbortedError, ToolRunError) as e:  # how the commit ends
            fut.set_exception(e)

    def _settle_aborted(self, rc: int, cpu: float) -> None:
        """Record a run that an abort (or a closed gate) ended; raise what the commit raises."""
        reason = self._abort_reason or "aborted before the gate opened"
        if self._abort_reason is None:
            self.manager.log.record(
                self.id,
                "aborted",
                state="aborted",
                returncode=rc,
                cpu_s=cpu,
                error=reason,
                during_run=True,
            )
            _emit(
                self, EventType.TXN_ABORTED, reason=reason, during_run=True, failed=False, cpu_s=cpu
            )
        else:
            self.manager.log.record(self.id, "reaped", returncode=rc)
        self.manager.forget(self)
        msg = f"transaction {self.id} aborted during its run: {reason}"
        raise TransactionAbortedError(msg, workflow_id=self.workflow_id)

    def _settle_ended(self, rc: int, cpu: float, run_pid: int) -> Any:
        """Record a run that ended by itself; return its parsed result or raise its failure."""
        stdout = self._path("out").read_bytes()
        if rc == 0:
            try:
                value = self.tool.parse(stdout)
            except Exception as e:  # the run happened; its output is the tool's problem
                error = f"output could not be parsed: {type(e).__name__}: {e}"
            else:
                late: dict[str, Any] = {"finished_before_abort": True} if self._abort_reason else {}
                self.manager.log.record(
                    self.id,
                    "committed",
                    state="committed",
                    returncode=0,
                    cpu_s=cpu,
                    result=stdout.decode(errors="replace"),
                    **late,
                )
                self.manager.forget(self)
                _emit(self, EventType.TXN_COMMITTED, phase="done", pid=run_pid, cpu_s=cpu)
                return value
        else:
            tail = self._path("err").read_bytes()[-500:].decode(errors="replace")
            error = f"exit status {rc}: {tail}"
        self.manager.log.record(
            self.id, "failed", state="failed", returncode=rc, cpu_s=cpu, error=error
        )
        self.manager.forget(self)
        _emit(self, EventType.TXN_ABORTED, reason=error, during_run=True, failed=True, cpu_s=cpu)
        msg = f"transaction {self.id} failed: {error}"
        raise ToolRunError(msg, returncode=rc, workflow_id=self.workflow_id)

    def _abort_prepared(self, reason: str, *, state: str = "aborted") -> bool:
        if not self.manager.log.record(
            self.id,
            state,
            expect=("prepared", "interrupted"),
            state=state,
            error=reason,
            during_run=False,
            cpu_s=0.0,
        ):
            return False
        self.manager.forget(self)
        _emit(self, EventType.TXN_ABORTED, reason=reason, during_run=False, failed=False, cpu_s=0.0)
        return True


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
        # this coordinator, as the owner of what it prepares (pid + start time)
        self.owner = (os.getpid(), identity(os.getpid()) or 0.0)
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
                "owner_pid": self.owner[0],
                "owner_start": self.owner[1],
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
        _emit(txn, EventType.TXN_PREPARED, est_cost=est_cost, consumers=names)
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
        return [t.id for t in victims if t.abort(f"{reason}: {consumer} dropped")]

    def _on_task_event(self, event: Event) -> None:
        if isinstance(event.data, TaskAborted):
            task, dag = event.data.task, event.data.dag_id
            self.drop_consumer(task, reason="task aborted")
            self.drop_consumer(f"{dag}/{task}", reason="task aborted")

    def forget(self, txn: Transaction) -> None:
        """Stop tracking a transaction that has ended (its run recorded in the log)."""
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
        report = recover_open(self.log, self.runs)
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
            t.join(timeout=10)
        self.log.close()


def _emit(txn: Transaction, type: EventType, **data: Any) -> None:
    txn.manager.bus.emit(
        type,
        workflow_id=txn.workflow_id,
        source="txn",
        txn_id=txn.id,
        tool=txn.tool.name,
        **data,
    )
