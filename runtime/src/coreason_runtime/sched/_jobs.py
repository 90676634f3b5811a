"""Jobs the scheduler can physically pause: OS process groups, cgroup v2 freezing, in-process work.

A :class:`Preemptible` has ``pause()`` and ``resume()``; the decode engine's sessions implement
it, and so does every :class:`Job` here. Process jobs run in their own process group (so
``SIGSTOP`` reaches the whole tree), or in their own cgroup v2 when freezing is available.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import psutil

from coreason_runtime._exceptions import SchedulerError

__all__ = [
    "CallableJob",
    "CgroupFreezer",
    "InProcessJob",
    "Job",
    "JobOutcome",
    "PauseGate",
    "Preemptible",
    "ProcessJob",
    "cuda_stream",
]

OFF_PATH_NICE = 10


@runtime_checkable
class Preemptible(Protocol):
    """Anything the scheduler can pause and resume (decode sessions, worker processes).

    The one protocol of the runtime: the decode engine's
    :class:`~coreason_runtime.decode.Preemptible` extends it with a ``priority``.
    """

    def pause(self) -> object: ...

    def resume(self) -> None: ...


@dataclass(frozen=True)
class JobOutcome:
    """How one attempt ended. ``died`` means killed by a signal nobody in the runtime sent."""

    ok: bool
    error: str | None = None
    died: bool = False
    value: Any = None


@runtime_checkable
class Job(Preemptible, Protocol):
    """One running attempt of a task."""

    def poll(self) -> JobOutcome | None:
        """``None`` while running, else the outcome."""
        ...

    def kill(self) -> None: ...

    def set_priority(self, critical: bool, cpus: Sequence[int] | None) -> None:
        """Niceness and CPU affinity for on-path (critical) and off-path work."""
        ...

    def flops_used(self) -> float | None:
        """FLOPs the job itself measured, or ``None`` to let the scheduler estimate."""
        ...


# --- cgroup v2 freezing --------------------------------------------------------------------


class CgroupFreezer:
    """Freeze a process tree with cgroup v2 ``cgroup.freeze`` (no signal reaches the task).

    Each job gets its own leaf cgroup under the first writable cgroup2 mount; ``available()``
    says whether this machine allows it.
    """

    def __init__(self, name: str, root: Path | None = None) -> None:
        root = root or self.mount()
        if root is None:
            msg = "no writable cgroup v2 hierarchy on this machine"
            raise SchedulerError(msg)
        self.path = root / f"coreason-{os.getpid()}-{name}"
        self.path.mkdir(exist_ok=True)

    @staticmethod
    def mount() -> Path | None:
        try:
            mounts = Path("/proc/mounts").read_text().splitlines()
        except OSError:
            return None
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                path = Path(parts[1])
                if (path / "cgroup.procs").exists() and os.access(path, os.W_OK):
                    return path
        return None

    @classmethod
    def available(cls) -> bool:
        root = cls.mount()
        if root is None:
            return False
        try:
            probe = cls("probe", root)
        except (OSError, SchedulerError):
            return False
        ok = (probe.path / "cgroup.freeze").exists()
        probe.remove()
        return ok

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def _set(self, value: str, timeout: float = 1.0) -> None:
        (self.path / "cgroup.freeze").write_text(value)
        want = f"frozen {value}"
        deadline = time.monotonic() + timeout
        while want not in (self.path / "cgroup.events").read_text():
            if time.monotonic() > deadline:
                msg = f"cgroup {self.path} did not reach {want!r}"
                raise SchedulerError(msg)
            time.sleep(0.0002)

    def freeze(self) -> None:
        self._set("1")

    def thaw(self) -> None:
        self._set("0")

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / "cgroup.kill").write_text("1")

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


# --- OS processes --------------------------------------------------------------------------


def _wait_state(pid: int, stopped: bool, timeout: float = 0.5) -> None:
    """Spin until /proc says the process is (not) stopped, so pause() returns only when true."""
    stat = f"/proc/{pid}/stat"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(stat, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone: nothing left to stop
        if (state in (b"T", b"t")) == stopped or state in (b"Z", b"X"):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0)


class ProcessJob:
    """A worker process in its own process group, paused by SIGSTOP/SIGCONT or cgroup freeze.

    Build it from an argv (:meth:`spawn`) or wrap a ``subprocess.Popen`` /
    ``multiprocessing.Process`` whose child called ``os.setsid()``.

    With ``confirm=False`` (default) ``pause()`` returns once SIGSTOP is sent: the kernel
    handles it before the worker can run user code again, so the core is free at once. With
    ``confirm=True`` it also waits until /proc reports the process stopped (slower under
    CPU contention, since the stop is processed when the worker is next scheduled).
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes] | multiprocessing.process.BaseProcess,
        *,
        freezer: CgroupFreezer | None = None,
        confirm: bool = False,
        stderr: Any = None,
    ) -> None:
        self.proc = proc
        pid = proc.pid
        if pid is None:
            msg = "the process has not started"
            raise SchedulerError(msg)
        self.pid: int = pid
        self.freezer = freezer
        self.confirm = confirm
        self.paused = False
        self._killed = False
        self._stderr: Any = stderr  # a file of ours to read on failure and close at the end
        if freezer is not None:
            freezer.add(self.pid)

    @classmethod
    def spawn(
        cls, argv: Sequence[str], *, freeze: bool = False, confirm: bool = False, **popen: Any
    ) -> ProcessJob:
        """Start ``argv`` in a new session (its own process group)."""
        popen.setdefault("stdout", subprocess.DEVNULL)
        own_err = "stderr" not in popen  # only a file we opened is ours to read and close
        if own_err:
            # a file, not a pipe: a chatty job can never block on a full pipe
            popen["stderr"] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _release()
        err = popen["stderr"]
        try:
            proc = subprocess.Popen(list(argv), start_new_session=True, **popen)
        except BaseException:
            if own_err:
                err.close()
            raise
        freezer = CgroupFreezer(f"{proc.pid}") if freeze else None
        return cls(proc, freezer=freezer, confirm=confirm, stderr=err if own_err else None)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def pause(self) -> None:
        if self.paused or self._returncode() is not None:
            return
        if self.freezer is not None:
            self.freezer.freeze()
        else:
            self._signal_group(signal.SIGSTOP)
            if self.confirm:
                _wait_state(self.pid, stopped=True)
        self.paused = True

    def resume(self) -> None:
        if not self.paused:
            return
        if self.freezer is not None:
            self.freezer.thaw()
        else:
            self._signal_group(signal.SIGCONT)
            if self.confirm:
                _wait_state(self.pid, stopped=False)
        self.paused = False

    def kill(self) -> None:
        self._killed = True
        if self.freezer is not None:
            self.freezer.kill()
        self._signal_group(signal.SIGKILL)
        self._signal_group(signal.SIGCONT)
        self._join()
        self._release()

    def _release(self) -> None:
        if self.freezer is not None:
            self.freezer.remove()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _join(self) -> None:
        if isinstance(self.proc, subprocess.Popen):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        else:
            self.proc.join(timeout=5)

    def _returncode(self) -> int | None:
        if isinstance(self.proc, subprocess.Popen):
            return self.proc.poll()
        return self.proc.exitcode

    def poll(self) -> JobOutcome | None:
        rc = self._returncode()
        if rc is None:
            return None
        detail = ""
        if self._stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stderr.seek(0)
                detail = self._stderr.read()[-500:].decode(errors="replace")
        self._release()
        if rc == 0:
            return JobOutcome(ok=True)
        if rc < 0 and not self._killed:
            return JobOutcome(ok=False, died=True, error=f"worker {self.pid} died of signal {-rc}")
        return JobOutcome(ok=False, error=f"exit status {rc}{': ' + detail if detail else ''}")

    def _group(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def set_priority(self, critical: bool, cpus: Sequence[int] | None) -> None:
        for p in self._group():
            with contextlib.suppress(psutil.Error, OSError):
                p.nice(0 if critical else OFF_PATH_NICE)
                if cpus:
                    p.cpu_affinity(list(cpus))

    def flops_used(self) -> float | None:
        return None


def _child_main(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.setsid()  # own process group, so SIGSTOP reaches everything the task forks
    try:
        ok = fn(*args)
    except BaseException:
        os._exit(1)
    os._exit(0 if ok is None or ok else 1)


class CallableJob(ProcessJob):
    """Run ``fn(*args)`` in a forked worker process; falsy-but-not-None or raising = failure."""

    def __init__(
        self, fn: Callable[..., Any], *args: Any, freeze: bool = False, confirm: bool = False
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_child_main, args=(fn, args), daemon=True)
        proc.start()
        freezer = CgroupFreezer(f"{proc.pid}") if freeze else None
        super().__init__(proc, freezer=freezer, confirm=confirm)


# --- in-process work -----------------------------------------------------------------------


class PauseGate:
    """Cooperative pause for in-process work: the worker calls ``checkpoint()`` between steps."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self.cancelled = False
        self.stream: Any = None  # a CUDA stream whose priority follows the critical path

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def checkpoint(self) -> None:
        """Block while paused; raise :class:`SchedulerError` once cancelled."""
        self._running.wait()
        if self.cancelled:
            msg = "task cancelled by the scheduler"
            raise SchedulerError(msg)


class InProcessJob:
    """Work on a thread of this process, paused through a :class:`Preemptible` handle.

    ``target(gate)`` runs on a thread; pause/resume go to ``handle`` (e.g. a decode session's
    pause/resume) when given, else to the cooperative ``gate``.
    """

    def __init__(
        self,
        target: Callable[[PauseGate], Any],
        *,
        handle: Preemptible | None = None,
        gpu: bool = False,
    ) -> None:
        self.gate = PauseGate()
        self.handle = handle
        self.gpu = gpu
        self._streams: dict[bool, Any] = {}
        if gpu:
            self.gate.stream = self._stream(True)
        self._outcome: JobOutcome | None = None
        self._flops: float | None = None
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self._thread.start()

    def _run(self, target: Callable[[PauseGate], Any]) -> None:
        try:
            value = target(self.gate)
        except Exception as e:  # the outcome carries the error; the scheduler decides
            self._outcome = JobOutcome(ok=False, error=f"{type(e).__name__}: {e}")
            return
        ok = value is None or bool(value)
        self._outcome = JobOutcome(ok=ok, value=value, error=None if ok else "returned false")

    def pause(self) -> None:
        (self.handle or self.gate).pause()

    def resume(self) -> None:
        (self.handle or self.gate).resume()

    def poll(self) -> JobOutcome | None:
        return self._outcome

    def kill(self) -> None:
        self.gate.cancelled = True
        self.gate.resume()
        if self.handle is not None:
            with contextlib.suppress(Exception):
                self.handle.resume()

    def _stream(self, critical: bool) -> Any:
        if critical not in self._streams:
            self._streams[critical] = cuda_stream(critical)
        return self._streams[critical]

    def set_priority(self, critical: bool, cpus: Sequence[int] | None) -> None:
        """Threads share the process's niceness and affinity; GPU work switches stream.

        The target picks ``gate.stream`` up at its next launch (``torch.cuda.stream(...)``),
        so on-path kernels go to the high-priority stream, off-path ones to the low one.
        """
        if self.gpu:
            self.gate.stream = self._stream(critical)

    def report_flops(self, flops: float) -> None:
        self._flops = flops

    def flops_used(self) -> float | None:
        return self._flops


def cuda_stream(critical: bool) -> Any:
    """A CUDA stream at the highest priority for on-path work, lowest off-path; ``None`` on CPU.

    GPU decode/simulation tasks launch their kernels on this stream so the device's own
    scheduler favours the critical path.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    # torch's stubs declare priority_range as a method; it is a staticmethod at runtime
    low, high = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]
    return torch.cuda.Stream(priority=high if critical else low)  # type: ignore[no-untyped-call]
