"""Ledgers in SQLite (WAL): atomic check-and-charge across threads and processes."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from coreason_runtime._exceptions import (
    BudgetExceededError,
    LedgerBackendError,
    UnknownWorkflowError,
)
from coreason_runtime.budget._models import Charge, LeaseGrowth, Ledger, ReservationRecord
from coreason_runtime.budget._owners import owner_gone

__all__ = ["RECOVERED_NOTE", "SQLiteLedgerBackend", "grow_grant", "recovered_charge"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledgers (
    workflow_id TEXT PRIMARY KEY,
    ceiling REAL,
    spent REAL NOT NULL DEFAULT 0,
    reserved REAL NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    by_tier TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    granted REAL NOT NULL,
    consumed REAL NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    created REAL NOT NULL,
    waiting INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost REAL NOT NULL,
    ts REAL NOT NULL,
    reservation_id TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS charges_wf ON charges(workflow_id, id);
CREATE INDEX IF NOT EXISTS charges_reservation ON charges(reservation_id);
"""

RECOVERED_NOTE = "recovered: process died mid-request; charged at last checkpoint"


def recovered_charge(record: ReservationRecord, note: str = RECOVERED_NOTE) -> Charge:
    """The charge that settles an orphaned reservation at its last checkpoint."""
    return Charge(
        workflow_id=record.workflow_id,
        tier=record.tier,
        tokens_in=record.tokens_in,
        tokens_out=record.tokens_out,
        cost=record.consumed,
        ts=time.time(),
        reservation_id=record.reservation_id,
        note=note,
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the lease columns to a store written before leases (idempotent, race-safe)."""
    columns = {r["name"] for r in conn.execute("PRAGMA table_info(reservations)")}
    if "waiting" in columns:
        return
    try:
        conn.execute("ALTER TABLE reservations ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0")
    except sqlite3.OperationalError as e:  # another process added it first
        if "duplicate column" not in str(e):
            raise


def grow_grant(granted: float, consumed: float, add: float, minimum: float) -> tuple[float, bool]:
    """A lease's new grant and whether it grew: by ``add``, or trimmed to what it consumed."""
    if add >= minimum - 1e-9:
        return granted + add, True
    return max(min(granted, consumed), 0.0), False


def _ledger(row: sqlite3.Row) -> Ledger:
    return Ledger(
        workflow_id=row["workflow_id"],
        ceiling=row["ceiling"],
        spent=row["spent"],
        reserved=row["reserved"],
        tokens_in=row["tokens_in"],
        tokens_out=row["tokens_out"],
        requests=row["requests"],
        by_tier=json.loads(row["by_tier"]),
    )


def _record(row: sqlite3.Row) -> ReservationRecord:
    return ReservationRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118 (sqlite3.Row)


class SQLiteLedgerBackend:
    """Ledgers in one SQLite file; writes run in ``BEGIN IMMEDIATE`` transactions.

    Parameters
    ----------
    path:
        The database file (created with its tables on first use).
    busy_timeout:
        Seconds to wait for another writer before failing with ``LedgerBackendError``.
    """

    def __init__(self, path: Path | str, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        with self._store_errors("open"):
            self._conn().executescript(_SCHEMA)
            _migrate(self._conn())

    @contextmanager
    def _store_errors(self, what: str) -> Iterator[None]:
        """Turn a failing store (read-only, disk full, corrupt file) into LedgerBackendError."""
        try:
            yield
        except sqlite3.Error as e:
            msg = (
                f"ledger store {self.path} could not {what}: {e} (is $COREASON_HOME "
                "read-only, or its disk full?); nothing was charged"
            )
            raise LedgerBackendError(msg) from e

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._store_errors("open"):
            conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            msg = f"ledger store {self.path} is unavailable: {e}"
            raise LedgerBackendError(msg) from e
        try:
            with self._store_errors("write"):
                yield conn
                conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                conn.execute("ROLLBACK")
            raise

    def _require(self, db: sqlite3.Connection, workflow_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM ledgers WHERE workflow_id=?", (workflow_id,)).fetchone()
        if row is None:
            msg = f"no ledger for workflow {workflow_id!r}; set one with budgets.set(...)"
            raise UnknownWorkflowError(msg, workflow_id=workflow_id)
        return row  # type: ignore[no-any-return]

    def set_ceiling(self, workflow_id: str, ceiling: float | None) -> Ledger:
        with self._tx() as db:
            db.execute(
                "INSERT INTO ledgers(workflow_id, ceiling) VALUES(?, ?) "
                "ON CONFLICT(workflow_id) DO UPDATE SET ceiling=excluded.ceiling",
                (workflow_id, ceiling),
            )
            return _ledger(self._require(db, workflow_id))

    def get(self, workflow_id: str) -> Ledger | None:
        with self._store_errors("read"):
            row = (
                self._conn()
                .execute("SELECT * FROM ledgers WHERE workflow_id=?", (workflow_id,))
                .fetchone()
            )
        return None if row is None else _ledger(row)

    def ledgers(self) -> list[Ledger]:
        with self._store_errors("read"):
            rows = self._conn().execute("SELECT * FROM ledgers ORDER BY workflow_id").fetchall()
        return [_ledger(r) for r in rows]

    def reset(self, workflow_id: str) -> Ledger:
        with self._tx() as db:
            self._require(db, workflow_id)
            db.execute(
                "UPDATE ledgers SET spent=0, tokens_in=0, tokens_out=0, requests=0, "
                "by_tier='{}' WHERE workflow_id=?",
                (workflow_id,),
            )
            db.execute("DELETE FROM charges WHERE workflow_id=?", (workflow_id,))
            return _ledger(self._require(db, workflow_id))

    def delete(self, workflow_id: str) -> None:
        with self._tx() as db:
            self._require(db, workflow_id)
            for table in ("ledgers", "charges", "reservations"):
                db.execute(f"DELETE FROM {table} WHERE workflow_id=?", (workflow_id,))

    def reserve(self, record: ReservationRecord, minimum: float) -> float:
        with self._tx() as db:
            row = self._require(db, record.workflow_id)
            ceiling = row["ceiling"]
            available = (
                record.granted if ceiling is None else ceiling - row["spent"] - row["reserved"]
            )
            grant = min(record.granted, available)
            if grant < minimum:
                msg = (
                    f"workflow {record.workflow_id!r}: request needs at least {minimum:g} but "
                    f"only {max(available, 0):g} of Ω={ceiling:g} is left "
                    f"(spent {row['spent']:g}, reserved {row['reserved']:g})"
                )
                raise BudgetExceededError(
                    msg,
                    workflow_id=record.workflow_id,
                    tier=record.tier,
                    ceiling=ceiling,
                    spent=row["spent"],
                    requested=minimum,
                    ledger=_ledger(row),
                )
            db.execute(
                "UPDATE ledgers SET reserved=reserved+? WHERE workflow_id=?",
                (grant, record.workflow_id),
            )
            db.execute(
                "INSERT INTO reservations(reservation_id, workflow_id, tier, granted, consumed, "
                "tokens_in, tokens_out, pid, host, created) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (
                    record.reservation_id,
                    record.workflow_id,
                    record.tier,
                    grant,
                    0.0,
                    0,
                    0,
                    record.pid,
                    record.host,
                    record.created,
                ),
            )
            return grant

    def grow(self, record: ReservationRecord, want: float, minimum: float) -> LeaseGrowth:
        with self._tx() as db:
            row = self._require(db, record.workflow_id)
            res = db.execute(
                "SELECT granted FROM reservations WHERE reservation_id=?", (record.reservation_id,)
            ).fetchone()
            if res is None:
                msg = f"lease {record.reservation_id} is no longer in {self.path} (recovered?)"
                raise LedgerBackendError(msg)
            ceiling = row["ceiling"]
            available = want if ceiling is None else ceiling - row["spent"] - row["reserved"]
            granted, grown = grow_grant(
                res["granted"], record.consumed, min(want, available), minimum
            )
            db.execute(
                "UPDATE ledgers SET reserved=MAX(reserved+?, 0) WHERE workflow_id=?",
                (granted - res["granted"], record.workflow_id),
            )
            db.execute(
                "UPDATE reservations SET granted=?, waiting=?, consumed=?, tokens_in=?, "
                "tokens_out=? WHERE reservation_id=?",
                (
                    granted,
                    0 if grown else 1,
                    record.consumed,
                    record.tokens_in,
                    record.tokens_out,
                    record.reservation_id,
                ),
            )
            others = db.execute(
                "SELECT COALESCE(SUM(granted), 0) FROM reservations "
                "WHERE workflow_id=? AND waiting=0 AND reservation_id<>?",
                (record.workflow_id, record.reservation_id),
            ).fetchone()[0]
            return LeaseGrowth(granted=granted, grown=grown, releasable=float(others))

    def releasable(self, workflow_id: str) -> float:
        row = (
            self._conn()
            .execute(
                "SELECT COALESCE(SUM(granted), 0) FROM reservations "
                "WHERE workflow_id=? AND waiting=0",
                (workflow_id,),
            )
            .fetchone()
        )
        return float(row[0])

    def checkpoint(self, record: ReservationRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE reservations SET consumed=?, tokens_in=?, tokens_out=? "
                "WHERE reservation_id=?",
                (record.consumed, record.tokens_in, record.tokens_out, record.reservation_id),
            )

    def settle(self, record: ReservationRecord, charge: Charge) -> Ledger:
        with self._tx() as db:
            self._apply(db, record, charge)
            return _ledger(self._require(db, record.workflow_id))

    def _apply(self, db: sqlite3.Connection, record: ReservationRecord, charge: Charge) -> bool:
        """Release ``record``'s grant and add ``charge``, inside the caller's transaction.

        A reservation that is gone because it was already settled (a recovery settled it while
        its owner was thought dead, or two recoveries raced) charges nothing: False.
        """
        res = db.execute(
            "SELECT granted FROM reservations WHERE reservation_id=?", (record.reservation_id,)
        ).fetchone()
        row = self._require(db, record.workflow_id)
        if res is None and self._settled(db, record.reservation_id):
            return False
        by_tier = json.loads(row["by_tier"])
        by_tier[charge.tier] = by_tier.get(charge.tier, 0.0) + charge.cost
        release = res["granted"] if res is not None else 0.0
        db.execute(
            "UPDATE ledgers SET reserved=MAX(reserved-?, 0), spent=spent+?, "
            "tokens_in=tokens_in+?, tokens_out=tokens_out+?, requests=requests+1, by_tier=? "
            "WHERE workflow_id=?",
            (
                release,
                charge.cost,
                charge.tokens_in,
                charge.tokens_out,
                json.dumps(by_tier),
                record.workflow_id,
            ),
        )
        db.execute("DELETE FROM reservations WHERE reservation_id=?", (record.reservation_id,))
        db.execute(
            "INSERT INTO charges(workflow_id, tier, tokens_in, tokens_out, cost, ts, "
            "reservation_id, note) VALUES(?,?,?,?,?,?,?,?)",
            (
                charge.workflow_id,
                charge.tier,
                charge.tokens_in,
                charge.tokens_out,
                charge.cost,
                charge.ts,
                charge.reservation_id,
                charge.note,
            ),
        )
        return True

    @staticmethod
    def _settled(db: sqlite3.Connection, reservation_id: str) -> bool:
        found = db.execute(
            "SELECT 1 FROM charges WHERE reservation_id=? LIMIT 1", (reservation_id,)
        ).fetchone()
        return found is not None

    def history(self, workflow_id: str, limit: int = 1000) -> list[Charge]:
        with self._store_errors("read"):
            rows = self._history(workflow_id, limit)
        return [Charge(**dict(r)) for r in reversed(rows)]

    def _history(self, workflow_id: str, limit: int) -> list[sqlite3.Row]:
        return (
            self._conn()
            .execute(
                "SELECT workflow_id, tier, tokens_in, tokens_out, cost, ts, reservation_id, note "
                "FROM charges WHERE workflow_id=? ORDER BY id DESC LIMIT ?",
                (workflow_id, limit),
            )
            .fetchall()
        )

    def orphans(self) -> list[ReservationRecord]:
        with self._store_errors("read"):
            return self._orphans(self._conn())

    @staticmethod
    def _orphans(db: sqlite3.Connection) -> list[ReservationRecord]:
        mine = (socket.gethostname(), os.getpid())
        rows = db.execute("SELECT * FROM reservations WHERE host=? AND pid<>?", mine).fetchall()
        return [_record(r) for r in rows if owner_gone(r["pid"], r["created"])]

    def recover_orphans(self, note: str = RECOVERED_NOTE) -> list[Charge]:
        """Settle every orphan at its last checkpoint, reading them inside the same transaction.

        Two processes recovering at once serialise on the write lock: the second finds nothing
        left to recover, so no orphan is charged twice.
        """
        charges: list[Charge] = []
        with self._tx() as db:
            for record in self._orphans(db):
                charge = recovered_charge(record, note)
                if self._apply(db, record, charge):
                    charges.append(charge)
        return charges

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
