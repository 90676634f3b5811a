"""A real `coreason serve` subprocess on 127.0.0.1, used as the remote oracle in tests.

``serve_process`` serves a tiny random Llama (over the real SmolLM2 tokenizer) for fast tests,
or the model named by ``$COREASON_TEST_SERVE_MODEL``; ``serve_real`` always serves the real
SmolLM2-135M-Instruct. Both are started with ``python -m coreason_runtime.serve`` so they do
not depend on the CLI wiring, and are ready once ``/health`` says ``"ok"``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._fixtures.servers import free_port

__all__ = ["ServeProcess", "serve_process", "serve_real", "shared_model_cache"]

_READY_TIMEOUT = 180.0


def shared_model_cache() -> Path:
    """Where converted models persist between test sessions (conversion happens once).

    ``$COREASON_MODEL_CACHE`` when set, else a folder in the system temp dir; conversion into
    it is atomic and file-locked, so parallel sessions share it safely.
    """
    explicit = os.environ.get("COREASON_MODEL_CACHE")
    path = Path(explicit) if explicit else Path(tempfile.gettempdir()) / "coreason-test-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ServeProcess:
    """A running ``coreason serve``: where it listens, what it serves, the token it wants."""

    proc: subprocess.Popen[bytes]
    port: int
    model: str
    token: str
    log: Path
    states_seen: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, object]:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            return dict(json.loads(e.read()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_serve(
    model: str,
    workdir: Path,
    *,
    token: str | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    timeout: float = _READY_TIMEOUT,
) -> ServeProcess:
    """Start ``python -m coreason_runtime.serve`` and wait until ``/health`` says ``ok``."""
    port = free_port()
    token = token if token is not None else f"serve-{secrets.token_hex(8)}"
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    # One OpenMP thread: the server shares the CI's two cores with the test process, and
    # torch's spin-waiting threads then burn ~8x the CPU per request (measured: 4-5 s vs
    # 0.6 s of CPU for one 6-token answer of SmolLM2 on this loaded machine).
    env = {
        **os.environ,
        "COREASON_HOME": str(home),
        "COREASON_MODEL_CACHE": str(shared_model_cache()),
        "COREASON_SERVE_TOKEN": token,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra_env or {})
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coreason_runtime.serve",
                "--port",
                str(port),
                "--model",
                model,
                *(extra_args or []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = ServeProcess(proc=proc, port=port, model=model, token=token, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"coreason serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            raise RuntimeError(msg)
        try:
            state = server.health().get("status")
        except (OSError, ValueError):
            state = None
        if isinstance(state, str) and state not in server.states_seen:
            server.states_seen.append(state)
        if state == "ok":
            return server
        if state == "error":
            server.stop()
            msg = f"coreason serve failed to load {model!r}: {server.health()}"
            raise RuntimeError(msg)
        time.sleep(0.1)
    server.stop()
    msg = f"coreason serve did not become healthy in {timeout}s:\n{log.read_text()[-4000:]}"
    raise TimeoutError(msg)


def tiny_model_folder() -> Path:
    """A tiny random Llama over the real SmolLM2 tokenizer, saved where ``load_model`` reads.

    Built once into the shared cache (atomically, under a file lock), so later sessions need
    not import torch in the test process at all.
    """
    from filelock import FileLock

    cache = shared_model_cache()
    target = cache / "tiny-llama-seed0"
    with FileLock(str(cache / ".tiny-llama-seed0.lock")):
        if (target / "config.json").is_file():
            return target
        from coreason_runtime.models import load_tokenizer, tiny_llama

        tokenizer = load_tokenizer("smollm2", cache_dir=cache)
        loaded = tiny_llama(tokenizer, seed=0)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=cache))
        loaded.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


@pytest.fixture(scope="session")
def serve_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A session-wide ``coreason serve`` on a free 127.0.0.1 port, bearer token required.

    Serves ``$COREASON_TEST_SERVE_MODEL`` when set, else a tiny random Llama (fast, noise
    output; under a grammar it still produces schema-valid JSON).
    """
    workdir = tmp_path_factory.mktemp("serve")
    model = os.environ.get("COREASON_TEST_SERVE_MODEL") or str(tiny_model_folder())
    server = start_serve(model, workdir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A session-wide ``coreason serve`` on the real SmolLM2-135M-Instruct."""
    workdir = tmp_path_factory.mktemp("serve-real")
    server = start_serve("smollm2", workdir)
    yield server
    server.stop()
