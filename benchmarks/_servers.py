"""Real servers the benchmarks start on 127.0.0.1: redis-server and `coreason serve`.

The port and process helpers are the test fixtures' own (tests/_fixtures/servers.py), so a
benchmark and a test start a server the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests._fixtures.servers import RedisServer, free_port, wait_for_port

__all__ = ["free_port", "redis_server", "serve_subprocess"]


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server without persistence for the ``with`` block; yields its URL."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def serve_subprocess(
    home: Path, timeout: float = 300.0, extra_args: Sequence[str] = ()
) -> Iterator[int]:
    """`coreason serve` on the default model, ready (``/health`` ok); yields its port.

    ``extra_args`` go to the command line (``--stream-interval 8``).
    """
    import httpx

    port = free_port()
    env = dict(os.environ, COREASON_HOME=str(home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coreason_runtime.serve", "--port", str(port), *extra_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=timeout, proc=proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the model loads after the port opens
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").json().get("status") == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        else:
            msg = f"coreason serve on {port} never reported a loaded model"
            raise TimeoutError(msg)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
