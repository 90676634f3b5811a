"""The heavy run of a transaction: a child process group behind a gate, and how to meter it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

__all__ = ["GatedRun", "alive", "group_cpu", "identity", "kill_group"]

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

# the exit status of a run whose gate closed before it opened
GATE_CLOSED = 125

_TICK = os.sysconf("SC_CLK_TCK")


def identity(pid: int) -> float | None:
    """A process's start time (pid + start time identify it across pid reuse)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def alive(pid: int | None, start: float | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs (not a reused pid)."""
    if pid is None or start is None:
        return False
    now = identity(pid)
    return now is not None and abs(now - start) < 0.05


def group_cpu(pid: int) -> float:
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


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (gone already is fine)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class GatedRun:
    """A command started in its own process group, held at a gate until :meth:`open_gate`.

    Its stdout and stderr go to files; the shell around it writes the command's exit status to
    ``rc_file`` when it ends, so a coordinator that missed the end can still read it.
    """

    def __init__(self, proc: subprocess.Popen[bytes], gate: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.start = identity(proc.pid)
        self._gate: int | None = gate

    @classmethod
    def spawn(
        cls,
        command: Sequence[str],
        *,
        out: Path,
        err: Path,
        rc_file: Path,
        env: dict[str, str],
    ) -> GatedRun:
        """Start ``command`` behind a closed gate. Raises :class:`OSError` if it cannot start."""
        rc_file.unlink(missing_ok=True)
        gate_r, gate_w = os.pipe()
        full_env = {**os.environ, **env, "COREASON_RC_FILE": str(rc_file)}
        try:
            with open(out, "wb") as out_f, open(err, "wb") as err_f:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _GATE, "coreason-txn", *command],
                    stdin=gate_r,
                    stdout=out_f,
                    stderr=err_f,
                    env=full_env,
                    start_new_session=True,
                )
        except OSError:
            os.close(gate_w)
            raise
        finally:
            os.close(gate_r)
        return cls(proc, gate_w)

    @property
    def returncode(self) -> int | None:
        """The exit status once :meth:`wait` has reaped the run, else ``None``."""
        return self.proc.returncode

    def open_gate(self) -> None:
        """Let the command run."""
        assert self._gate is not None
        os.write(self._gate, b"go\n")
        self._close_gate()

    def cancel(self) -> None:
        """Close the gate unopened (the run exits without doing anything) and reap it."""
        self._close_gate()
        self.proc.wait()

    def _close_gate(self) -> None:
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None

    def exited(self) -> bool:
        """Whether the run has ended, reaped or not (does not reap it)."""
        if self.proc.returncode is not None:
            return True
        try:
            return bool(os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT))
        except ChildProcessError:
            return True

    def kill(self) -> float:
        """Kill the whole group; returns the CPU seconds it had used just before."""
        cpu = group_cpu(self.pid)
        kill_group(self.pid)
        return cpu

    def wait(self) -> float:
        """Block until the run ends and reap it; returns the CPU seconds of its children.

        Whatever the run left in its process group dies with it: a run killed from outside
        (kill -9 of its shell) would otherwise leave its command running, orphaned.
        """
        _, status, usage = os.wait4(self.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        kill_group(self.pid)  # the group outlives its reaped leader while members remain
        return cpu
