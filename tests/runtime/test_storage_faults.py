"""A read-only or full $COREASON_HOME: typed errors, and the stores left intact.

Each case runs in a child process. Read-only: files and folders lose their write bits and,
when the tests run as root (who writes anyway), the child drops the capabilities that let root
ignore them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) with capset(2). Disk full:
the child's RLIMIT_FSIZE is the store's present size (SIGXFSZ ignored), so any growth fails as
a full disk would. No mount and no root is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import Coordinator, RuntimeConfig
from coreason_runtime.tensor import ScriptedTier

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

_CHILD = textwrap.dedent("""
    import ctypes, json, os, resource, signal, sys
    from pathlib import Path
    mode, home = sys.argv[1], Path(sys.argv[2])

    def drop_root_overrides():
        libc = ctypes.CDLL(None, use_errno=True)
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header, data = Header(0x20080522, 0), (Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        keep = ~((1 << 1) | (1 << 2) | (1 << 3))
        data[0].effective &= keep
        data[0].permitted &= keep
        assert libc.capset(ctypes.byref(header), data) == 0

    if mode == "read-only":
        if os.geteuid() == 0:
            drop_root_overrides()
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(sys.argv[3])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    from coreason_runtime import Coordinator, RuntimeConfig
    from coreason_runtime.tensor import ScriptedTier

    schema = json.loads(sys.argv[4])
    out = {}
    for what in ("budgets", "cache", "txn", "generate"):
        try:
            rt = Coordinator(RuntimeConfig(home=home))
            if what == "generate":
                rt.router.set_tiers([ScriptedTier("local", ['{"n": 1}'])])
                rt.router.generate(schema, "a new question", workflow_id="wf", cache=False)
            else:
                getattr(rt, what)
            out[what] = "ok"
        except Exception as e:
            out[what] = [c.__name__ for c in type(e).__mro__]
    print(json.dumps(out))
""")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A home with a ledger, one settled request, a cache and an audit log."""
    home = tmp_path / "home"
    with Coordinator(RuntimeConfig(home=home)) as rt:
        rt.budgets.set("wf", ceiling=10_000)
        rt.router.set_tiers([ScriptedTier("local", ['{"n": 1}'])])
        rt.router.generate(SCHEMA, "a question", workflow_id="wf")
        rt.txn  # noqa: B018 - opening it creates the audit log
    return home


def _files(home: Path) -> dict[str, str]:
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


def _child(mode: str, home: Path, limit: int = 0) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(home), str(limit), json.dumps(SCHEMA)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture
def read_only(store: Path) -> Iterator[Path]:
    paths = [store, *store.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield store
    for p in reversed(paths):
        p.chmod(modes[p])


def _intact(home: Path) -> None:
    """Every store passes SQLite's integrity check; the ledger equals its history."""
    for db_path in (home / "budgets.sqlite", home / "cache.sqlite", home / "txn" / "audit.sqlite3"):
        with sqlite3.connect(db_path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), db_path
    with Coordinator(RuntimeConfig(home=home)) as rt:
        ledger = rt.budgets.get("wf")
        assert ledger.reserved == 0
        assert ledger.spent == sum(c.cost for c in rt.budgets.history("wf"))


def test_a_read_only_home_gives_typed_errors_and_changes_nothing(read_only: Path) -> None:
    before = _files(read_only)
    out = _child("read-only", read_only)
    assert "LedgerBackendError" in out["budgets"]
    assert "CacheBackendError" in out["cache"]
    assert "AuditLogError" in out["txn"]
    assert "LedgerBackendError" in out["generate"]
    assert all("CoreasonError" in v for v in out.values())
    assert _files(read_only) == before


def test_a_full_disk_gives_typed_errors_and_corrupts_nothing(store: Path) -> None:
    size = max(p.stat().st_size for p in store.rglob("*") if p.is_file())
    out = _child("disk-full", store, limit=size)
    assert all(v == "ok" or "CoreasonError" in v for v in out.values()), out
    assert "LedgerBackendError" in out["generate"]
    _intact(store)  # and the next start recovered whatever the dead child held


def test_the_suite_is_not_fooled_by_root(store: Path) -> None:
    """The read-only case is real: without the child's measures, root would write."""
    if os.geteuid() != 0:
        pytest.skip("only root ignores write bits")
    (store / "probe").write_text("root writes where bits say no")
    assert (store / "probe").exists()
