"""A whole deployment on one machine: a Temporal dev server, Redis, and N worker processes.

``coreason cluster up`` runs a :class:`LocalCluster` in the foreground; notebooks, tests and
benchmarks start one in a ``with`` block. Workers are real processes (``coreason worker``), so
they can be killed (SIGKILL) and replaced like machines; the servers keep their state in the
cluster's folder (Redis with an fsync'd append-only file, Temporal in SQLite), so they can be
restarted without losing a settled charge or a workflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coreason_runtime._config import model_cache_dir
from coreason_runtime._exceptions import ConfigurationError, WorkerDiedError
from coreason_runtime.scale._registry import WorkerInfo, workers
from coreason_runtime.scale._servers import RedisServer, TemporalDevServer
from coreason_runtime.scale._workflow import TASK_QUEUE

__all__ = ["LocalCluster", "threads_per_worker"]

STATE_FILE = "cluster.json"


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Compute threads for each of ``workers`` workers sharing ``cores`` (this machine's):
    the cores shared out, at least one each (more workers than cores then oversubscribe)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(workers, 1))


class LocalCluster:
    """Temporal, Redis and ``workers`` worker processes under ``workdir``.

    Parameters
    ----------
    workdir:
        The servers' state, each worker's ``$COREASON_HOME`` and every log.
    workers:
        How many workers to start (named ``w1``, ``w2`` ...).
    deployment, task_queue:
        Where the workers take requests from and share intents.
    setup:
        ``"module:function"`` each worker calls with its runtime (its tiers); ``None`` keeps
        the default cascade (the local model).
    concurrency:
        Requests each worker runs at once.
    threads:
        Torch compute threads per worker; by default this machine's cores shared out
        (``cores // workers``, at least 1), so the workers do not oversubscribe the cores.
    env:
        Extra environment for the workers (``COREASON_SUBGOAL_CACHE=0`` ...).
    temporal_port, redis_port:
        Fixed ports (free ones when omitted).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int = 2,
        deployment: str = "default",
        task_queue: str = TASK_QUEUE,
        setup: str | None = None,
        concurrency: int = 4,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        temporal_port: int | None = None,
        redis_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.size = workers
        self.deployment = deployment
        self.task_queue = task_queue
        self.setup = setup
        self.concurrency = concurrency
        self.threads = threads or threads_per_worker(workers)
        self.env = dict(env or {})
        self.redis = RedisServer(self.workdir / "redis", redis_port, persistent=True)
        self.temporal = TemporalDevServer(self.workdir / "temporal", temporal_port)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._spawned = 0

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def temporal_address(self) -> str:
        return self.temporal.address

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> LocalCluster:
        """Start the servers and the workers; return once every worker has joined (a worker
        on a model loads it first: on a busy machine that takes a while)."""
        try:
            self.redis.start()
            self.temporal.start()
            names = [self.start_worker() for _ in range(self.size)]
            self.wait_for_workers(names, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def stop(self) -> None:
        """Stop every worker (SIGTERM: they leave cleanly), then Temporal, then Redis."""
        for name in list(self.procs):
            self.stop_worker(name)
        self.temporal.stop()
        self.redis.stop()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- workers -------------------------------------------------------------------------------

    def worker_command(self, name: str) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "coreason_runtime.cli",
            "worker",
            "--temporal",
            self.temporal_address,
            "--redis",
            self.redis_url,
            "--deployment",
            self.deployment,
            "--name",
            name,
            "--queue",
            self.task_queue,
            "--concurrency",
            str(self.concurrency),
            "--threads",
            str(self.threads),
        ]
        return command + (["--setup", self.setup] if self.setup else [])

    def worker_env(self, home: Path) -> dict[str, str]:
        """A worker's environment: its own ``$COREASON_HOME``; the models converted once for
        all (this process's model cache, so every worker loads the same weights and precision
        map); one KV disk tier for all (``<workdir>/kv``, content-addressed: KV one worker
        wrote is a hit on another); its share of the cores. ``env`` overrides any of them."""
        return {
            **os.environ,
            "COREASON_HOME": str(home),
            "COREASON_MODEL_CACHE": str(model_cache_dir()),
            "COREASON_KV_DIR": str(self.workdir / "kv"),
            "OMP_NUM_THREADS": str(self.threads),  # OpenMP's pool too, not only torch's
            **self.env,
        }

    def start_worker(self, name: str | None = None) -> str:
        """Start one more worker process; returns its name."""
        self._spawned += 1
        name = name or f"w{self._spawned}"
        home = self.workdir / "workers" / name
        home.mkdir(parents=True, exist_ok=True)
        with (home / "worker.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                self.worker_command(name),
                env=self.worker_env(home),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return name

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker mid-whatever (what a machine that loses power does)."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_worker(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM a worker: it finishes its requests' current activities and leaves."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def workers(self) -> list[WorkerInfo]:
        """The deployment's workers as its Redis knows them (alive or not)."""
        return workers(self.redis_url, self.deployment)

    def wait_for_workers(self, names: list[str], timeout: float = 300.0) -> None:
        """Return once each named worker beats.

        Raises
        ------
        WorkerDiedError
            A worker process exited first (its log is named).
        ConfigurationError
            They did not all join within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        pids = {self.procs[n].pid for n in names}
        while time.monotonic() < deadline:
            for name in names:
                proc = self.procs[name]
                if proc.poll() is not None:
                    log = self.workdir / "workers" / name / "worker.log"
                    msg = f"worker {name!r} exited with {proc.returncode}; see {log}"
                    raise WorkerDiedError(msg)
            if pids <= {w.pid for w in self.workers() if w.alive}:
                return
            time.sleep(0.1)
        msg = f"workers {names} did not join within {timeout:g} s; logs under {self.workdir}"
        raise ConfigurationError(msg)

    # --- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Where everything is: addresses, the deployment, every process id."""
        return {
            "temporal": self.temporal_address,
            "redis_url": self.redis_url,
            "deployment": self.deployment,
            "task_queue": self.task_queue,
            "threads_per_worker": self.threads,
            "workdir": str(self.workdir),
            "supervisor": os.getpid(),
            "pids": {
                "temporal": self.temporal.proc.pid if self.temporal.proc else None,
                "redis": self.redis.proc.pid if self.redis.proc else None,
                **{name: p.pid for name, p in self.procs.items()},
            },
        }

    def _write_state(self) -> None:
        (self.workdir / STATE_FILE).write_text(json.dumps(self.state(), indent=2))

    @staticmethod
    def read_state(workdir: Path) -> dict[str, Any]:
        """The state a running cluster wrote in ``workdir`` (for ``coreason cluster down``)."""
        path = Path(workdir) / STATE_FILE
        if not path.is_file():
            msg = f"no running cluster in {workdir} (no {STATE_FILE})"
            raise ConfigurationError(msg)
        state: dict[str, Any] = json.loads(path.read_text())
        return state

    def __repr__(self) -> str:
        return (
            f"<LocalCluster {self.deployment!r} temporal={self.temporal_address} "
            f"redis={self.redis_url} workers={sorted(self.procs)}>"
        )
