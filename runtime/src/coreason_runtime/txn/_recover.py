"""Recovery after a restart: presumed abort for undecided calls, orphaned runs killed."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from coreason_runtime.txn._log import AuditLog, TxnRow
from coreason_runtime.txn._proc import alive, group_cpu, kill_group

__all__ = ["OPEN_STATES", "RecoveryReport", "recover_open"]

OPEN_STATES = ("prepared", "running")


@dataclass
class RecoveryReport:
    """What a restart found: undecided calls aborted, interrupted runs killed or completed."""

    aborted: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)


def recover_open(log: AuditLog, runs: Path) -> RecoveryReport:
    """Resolve what dead coordinators left open in ``log`` (run outputs in ``runs``)."""
    report = RecoveryReport()
    for row in log.in_states(*OPEN_STATES):
        if alive(row["owner_pid"], row["owner_start"]):
            continue  # a live coordinator (maybe this one) owns it
        if row["state"] == "prepared":
            if log.record(
                row["id"],
                "aborted",
                expect=("prepared",),
                state="aborted",
                error="recovered: coordinator died before deciding",
                recovered=True,
            ):
                report.aborted.append(row["id"])
            continue
        _recover_run(log, runs, row, report)
    return report


def _recover_run(log: AuditLog, runs: Path, row: TxnRow, report: RecoveryReport) -> None:
    pid, start = row["run_pid"], row["run_start"]
    cpu = 0.0
    if alive(pid, start):
        cpu = group_cpu(pid)
        kill_group(pid)
        report.killed_pids.append(pid)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout=5)
    rc_path = runs / f"{row['id']}.rc"
    rc = int(rc_path.read_text()) if rc_path.exists() and pid not in report.killed_pids else None
    if rc == 0:
        out = (runs / f"{row['id']}.out").read_bytes().decode(errors="replace")
        log.record(
            row["id"], "committed", state="committed", returncode=0, result=out, recovered=True
        )
        report.completed.append(row["id"])
        return
    log.record(
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
