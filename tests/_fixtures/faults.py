"""Fault injection: kill -9 a process at a random point of a request, then audit what is left.

One function per victim (the Coordinator, a kernel, ``coreason serve``, a tool's heavy run).
Each runs one trial and returns a :class:`Trial`: how far the ledger is from its own history,
what is left orphaned, whether the next start recovered, whether the audit log tells the
truth. The suite runs a few trials of each; ``benchmarks/bench_hardening.py`` runs 100.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from tests._fixtures.serve import ServeProcess

__all__ = [
    "Trial",
    "kill_coordinator",
    "kill_kernel",
    "kill_serve",
    "kill_tool_run",
    "ledger_audit",
]

CEILING = 1_000_000.0

# A tier charging one output token per millisecond (the router's meter sees each), under a
# Coordinator on SQLite ledgers in the given home; requests run back to back until killed.
_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from coreason_runtime import Coordinator, RuntimeConfig
    from coreason_runtime.tensor import BlackBoxTier, TierOutput

    class Ticking(BlackBoxTier):
        name, model_name = "local", "ticking"
        def complete(self, request, meter):
            meter.charge(tokens_in=12)
            for _ in range(request.max_tokens):
                time.sleep(0.001)
                meter.charge(tokens_out=1)
            return TierOutput(text='{"n": 1}', tokens_in=12, tokens_out=request.max_tokens,
                              model="ticking")

    rt = Coordinator(RuntimeConfig(home=Path(sys.argv[1]), subgoal_cache=False))
    rt.budgets.set("wf", ceiling=%(ceiling)r)
    rt.router.set_tiers([Ticking()])
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    print("ready", flush=True)
    while True:
        res = rt.router.generate(schema, "one", workflow_id="wf", max_tokens=400)
        print("settled", res.cost, flush=True)
""") % {"ceiling": CEILING}


@dataclass
class Trial:
    """What one kill left behind (every count should be 0, every flag true)."""

    victim: str
    discrepancy: float = 0.0  # |spent − Σ charges| + reserved + overshoot of Ω + double charges
    orphans: int = 0  # reservations left, or processes of the victim still alive
    recovered: bool = True  # the next start came up and served
    audit_true: bool = True  # the audit log agrees with what happened
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.discrepancy < 1e-6 and self.orphans == 0 and self.recovered and self.audit_true


def ledger_audit(home: Path, trial: Trial, workflow: str = "wf") -> Trial:
    """Start a Coordinator on ``home`` (it recovers orphans) and audit the ledger."""
    from coreason_runtime import Coordinator, RuntimeConfig

    with Coordinator(RuntimeConfig(home=home, subgoal_cache=False)) as rt:
        ledger = rt.budgets.get(workflow)
        charges = rt.budgets.history(workflow, limit=1_000_000)
    ids = [c.reservation_id for c in charges]
    charged = sum(c.cost for c in charges)
    trial.discrepancy += abs(ledger.spent - charged) + ledger.reserved
    trial.discrepancy += max(ledger.spent - (ledger.ceiling or float("inf")), 0.0)
    trial.discrepancy += len(ids) - len(set(ids))  # a reservation charged twice
    with sqlite3.connect(home / "budgets.sqlite") as db:
        trial.orphans += db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
    trial.detail.update(spent=ledger.spent, charges=len(charges))
    trial.audit_true &= all(c.cost >= 0 for c in charges)
    return trial


def _reserved(ledgers: Path) -> float:
    try:
        with sqlite3.connect(ledgers, timeout=5) as db:
            row = db.execute("SELECT reserved FROM ledgers WHERE workflow_id='wf'").fetchone()
    except sqlite3.Error:
        return 0.0
    return float(row[0]) if row else 0.0


def _kill_and_reap(proc: subprocess.Popen[Any]) -> int:
    """kill -9 ``proc`` and its children; how many of them were still alive after."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return sum(1 for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE)


def kill_coordinator(workdir: Path, rng: random.Random) -> Trial:
    """A script's Coordinator killed at a random point of its requests."""
    home = workdir / f"home-{rng.getrandbits(32):08x}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(home)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip()
    if ready != "ready":
        _kill_and_reap(proc)
        proc.stdout.close()
        msg = f"the worker did not start: {ready!r}"
        raise RuntimeError(msg)
    time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the first few requests
    left = _kill_and_reap(proc)
    settled = [float(line.split()[1]) for line in proc.stdout.read().splitlines() if line]
    proc.stdout.close()
    trial = ledger_audit(home, Trial("coordinator", orphans=left))
    # every request the script saw settle is in the ledger, and at most one more (recovered)
    trial.audit_true &= trial.detail["charges"] in (len(settled), len(settled) + 1)
    trial.detail["settled_seen"] = len(settled)
    return trial


def kill_kernel(workdir: Path, rng: random.Random) -> Trial:
    """A notebook kernel killed while ``%%coreason ask`` decodes."""
    from tests.lab._kernel import SLOW_TIER, Kernel

    home = workdir / f"kernel-{rng.getrandbits(32):08x}"
    home.mkdir(parents=True)
    kernel = Kernel({"COREASON_HOME": str(home), "COREASON_SUBGOAL_CACHE": "0"})
    try:
        kernel.run(SLOW_TIER)
        kernel.run(f"Coordinator.default().budgets.set('wf', ceiling={CEILING!r})")
        kernel.kc.execute("%%coreason ask Answer -w wf -n 2000\nHow many?")
        ledgers = home / "budgets.sqlite"
        deadline = time.monotonic() + 60
        while _reserved(ledgers) == 0:  # the ask is decoding: its reservation is held
            assert time.monotonic() < deadline, "the ask never started"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.8))
        process = kernel.km.provisioner.process  # type: ignore[union-attr]
        pid = process.pid
        os.kill(pid, signal.SIGKILL)
        process.wait(30)
        alive = 1 if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" else 0
    finally:
        kernel.kc.stop_channels()
        kernel.km.cleanup_resources()
    return ledger_audit(home, Trial("kernel", orphans=alive))


def kill_serve(
    workdir: Path, rng: random.Random, model: str, server: ServeProcess | None = None
) -> tuple[Trial, ServeProcess]:
    """``coreason serve`` killed mid-stream under a client's oracle request, then restarted.

    Returns the trial and the restarted server (the next trial's victim; stop it when done).
    """
    from coreason_runtime import Coordinator, CoreasonError, OracleConfig, RuntimeConfig
    from coreason_runtime.tensor import RemoteTier

    from tests._fixtures.serve import start_serve

    run = workdir / f"serve-{rng.getrandbits(32):08x}"
    server = server or start_serve(model, run / "first")
    home = run / "client"
    failed = ""
    with Coordinator(RuntimeConfig(home=home, oracle=None, subgoal_cache=False)) as rt:
        rt.budgets.set("wf", ceiling=CEILING)
        oracle = OracleConfig(base_url=server.base_url, model="default", api_key=server.token)
        rt.router.set_tiers([RemoteTier(oracle)])
        future = rt.router.submit(
            {"type": "string"},
            "Count to a thousand.",
            workflow_id="wf",
            max_tokens=2000,
            temperature=1.0,
            seed=rng.getrandbits(16),
        )
        time.sleep(rng.uniform(0.05, 1.0))
        left = _kill_and_reap(server.proc)
        try:
            future.result(60)
        except CoreasonError as e:
            failed = type(e).__name__
    trial = ledger_audit(home, Trial("serve", orphans=left))
    trial.detail["client_error"] = failed
    restarted = start_serve(model, run / "again")
    trial.recovered = restarted.health().get("status") == "ok"
    return trial, restarted


def kill_tool_run(workdir: Path, rng: random.Random) -> Trial:
    """A tool's heavy run (a process group) killed with -9 in the middle of its commit."""
    from coreason_runtime import ToolRunError
    from coreason_runtime.txn import CommandTool, ToolTransactions

    home = workdir / f"tool-{rng.getrandbits(32):08x}"
    tt = ToolTransactions(home)
    tool = CommandTool("heavy", lambda i: ["sh", "-c", "sleep 30 & wait"])
    txn = tt.prepare(tool, {}, est_cost=1.0, consumers=["a"])
    future = txn.start()
    deadline = time.monotonic() + 10
    while tt.log.get(txn.id).get("run_pid") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(tt.log.get(txn.id)["run_pid"])
    time.sleep(rng.uniform(0.0, 0.3))
    group = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    os.kill(pid, signal.SIGKILL)
    trial = Trial("tool")
    try:
        future.result(30)
        trial.audit_true = False  # a killed run must not commit
    except ToolRunError:
        pass
    row = tt.log.get(txn.id)
    trial.audit_true &= row["state"] == "failed" and row.get("returncode") not in (0, None)
    tt.close()
    time.sleep(0.05)
    trial.orphans = sum(
        1 for p in group if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
    )
    again = ToolTransactions(home)  # the next start: nothing left to recover
    try:
        report = again.last_recovery
        trial.recovered = not (report.aborted or report.interrupted or report.killed_pids)
    finally:
        again.close()
    trial.detail["state"] = row["state"]
    return trial


def summary(trials: list[Trial]) -> dict[str, Any]:
    """Counts over trials of one victim (for the benchmark's table)."""
    return {
        "trials": len(trials),
        "discrepancies": sum(1 for t in trials if t.discrepancy >= 1e-6),
        "orphans": sum(t.orphans for t in trials),
        "not_recovered": sum(1 for t in trials if not t.recovered),
        "audit_false": sum(1 for t in trials if not t.audit_true),
        "examples": json.dumps([t.detail for t in trials[:2]]),
    }
