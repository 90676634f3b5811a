"""Fixtures shared by every test: an isolated $COREASON_HOME, a bus, real servers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import EventBus

# The converted model is read from where `scripts/setup.sh` put it (`coreason models pull` into
# $COREASON_HOME/models) before any test moves $COREASON_HOME to a temporary folder; tests,
# their servers and their notebook kernels inherit this.
os.environ.setdefault(
    "COREASON_MODEL_CACHE",
    str(Path(os.environ.get("COREASON_HOME", "~/.coreason")).expanduser() / "models"),
)

# One BLAS/OpenMP thread per process: test servers, notebook kernels and the test process share
# two cores, and torch's spinning worker threads otherwise make each of them several times
# slower (measured: 4–5 CPU-s against 0.6 CPU-s for one short answer of the real model).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Ctrl-C raises KeyboardInterrupt here whoever started the suite: a shell that runs it in the
# background without job control (`nohup pytest &`, some CI runners) starts Python with SIGINT
# ignored, and then the tests that send the kernel's interrupt (SIGINT to this process, as
# Jupyter's stop button does) would wait for an interrupt that never arrives.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Servers and models each live in their own fixture module.
pytest_plugins = [
    "tests._fixtures.servers",
    "tests._fixtures.models",
    "tests._fixtures.serve",
    "tests._fixtures.markers",
    "tests._fixtures.fuzz",
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$COREASON_HOME`` for one test."""
    path = tmp_path / "coreason-home"
    path.mkdir()
    monkeypatch.setenv("COREASON_HOME", str(path))
    for var in ("COREASON_ORACLE_BASE_URL", "COREASON_ORACLE_MODEL", "COREASON_ORACLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (the JSON-schema sample lives there)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared" / "data", here / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    pytest.skip("shared/data is not beside this checkout")


@pytest.fixture(autouse=True)
def _no_real_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Never let a test write into the developer's real ~/.coreason."""
    if "COREASON_HOME" not in os.environ or not os.environ["COREASON_HOME"].startswith(
        str(tmp_path_factory.getbasetemp())
    ):
        monkeypatch.setenv("COREASON_HOME", str(tmp_path_factory.mktemp("home")))
    yield
