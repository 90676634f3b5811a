"""The durable audit log of tool transactions: SQLite in WAL mode, one row per decision."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coreason_runtime._exceptions import AuditLogError, UnknownTransactionError

__all__ = ["AuditLog", "TxnRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txns (
    id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    workflow_id TEXT,
    inputs TEXT NOT NULL,
    est_cost REAL NOT NULL,
    consumers TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start REAL NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    run_pid INTEGER,
    run_start REAL,
    returncode INTEGER,
    cpu_s REAL,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS txns_state ON txns(state);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL,
    ts REAL NOT NULL,
    decision TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_txn ON decisions(txn_id);
"""

TxnRow = dict[str, Any]


class AuditLog:
    """Every prepare, commit, abort and recovery decision, durable before it takes effect.

    WAL mode. With ``synchronous="NORMAL"`` a decision that returned survives any crash of
    the process (kill -9 included); with ``"FULL"`` it also survives a power cut, at the cost
    of an fsync per decision. Safe to share between threads and between processes.
    """

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            msg = f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}"
            raise AuditLogError(msg)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(path), timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            msg = f"cannot open the audit log at {path}: {e}"
            raise AuditLogError(msg) from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                msg = f"audit log write failed: {e}"
                raise AuditLogError(msg) from e

    @contextmanager
    def _read(self, *, rows: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if rows:
                self._db.row_factory = sqlite3.Row
            try:
                yield self._db
            except sqlite3.Error as e:  # closed, locked past the timeout, corrupt
                msg = f"audit log read failed: {e}"
                raise AuditLogError(msg) from e
            finally:
                if rows:
                    self._db.row_factory = None

    def insert(self, row: TxnRow, decision: str, **detail: Any) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as db:
            db.execute(f"INSERT INTO txns ({cols}) VALUES ({marks})", tuple(row.values()))
            self._decide(db, row["id"], decision, detail)

    def record(
        self, txn_id: str, decision: str, *, expect: tuple[str, ...] | None = None, **fields: Any
    ) -> bool:
        """Apply ``fields`` and log ``decision`` in one transaction.

        With ``expect``, only when the current state is one of them (compare-and-set); returns
        whether the update applied. Fields that are not columns go into the decision's detail.
        """
        cols = {k: v for k, v in fields.items() if k in _COLUMNS}
        detail = {k: v for k, v in fields.items() if k not in _COLUMNS}
        with self._tx() as db:
            cur = db.execute("SELECT state FROM txns WHERE id = ?", (txn_id,)).fetchone()
            if cur is None:
                msg = f"no transaction {txn_id!r} in the audit log"
                raise UnknownTransactionError(msg)
            if expect is not None and cur[0] not in expect:
                return False
            cols["updated"] = time.time()
            sets = ", ".join(f"{k} = ?" for k in cols)
            db.execute(f"UPDATE txns SET {sets} WHERE id = ?", (*cols.values(), txn_id))
            self._decide(
                db,
                txn_id,
                decision,
                {
                    **detail,
                    **{
                        k: v
                        for k, v in cols.items()
                        if k in ("state", "run_pid", "returncode", "cpu_s")
                    },
                },
            )
            return True

    def note(self, txn_id: str, decision: str, **detail: Any) -> None:
        """Log a decision that changes no state (e.g. a refused prepare)."""
        with self._tx() as db:
            self._decide(db, txn_id, decision, detail)

    @staticmethod
    def _decide(db: sqlite3.Connection, txn_id: str, decision: str, detail: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO decisions (txn_id, ts, decision, detail) VALUES (?, ?, ?, ?)",
            (txn_id, time.time(), decision, json.dumps(detail, default=str)),
        )

    def get(self, txn_id: str) -> TxnRow:
        with self._read(rows=True) as db:
            row = db.execute("SELECT * FROM txns WHERE id = ?", (txn_id,)).fetchone()
        if row is None:
            msg = f"no transaction {txn_id!r} in the audit log"
            raise UnknownTransactionError(msg)
        return dict(row)

    def in_states(self, *states: str) -> list[TxnRow]:
        marks = ", ".join("?" for _ in states)
        with self._read(rows=True) as db:
            rows = db.execute(
                f"SELECT * FROM txns WHERE state IN ({marks}) ORDER BY created", states
            ).fetchall()
        return [dict(r) for r in rows]

    def decisions(self, txn_id: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """(txn_id, decision, detail) in the order they were made."""
        q = "SELECT txn_id, decision, detail FROM decisions"
        args: tuple[str, ...] = ()
        if txn_id is not None:
            q += " WHERE txn_id = ?"
            args = (txn_id,)
        with self._read() as db:
            rows = db.execute(q + " ORDER BY seq", args).fetchall()
        return [(t, d, json.loads(x)) for t, d, x in rows]

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM txns GROUP BY state").fetchall()
        return {s: n for s, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


_COLUMNS = {
    "tool",
    "workflow_id",
    "inputs",
    "est_cost",
    "consumers",
    "state",
    "owner_pid",
    "owner_start",
    "updated",
    "run_pid",
    "run_start",
    "returncode",
    "cpu_s",
    "result",
    "error",
}
