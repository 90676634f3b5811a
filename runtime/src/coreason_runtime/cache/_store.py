"""Content-addressed stores for cache entries and checkpoints: the interface and SQLite."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coreason_runtime._exceptions import CacheBackendError, ExpressionTooLargeError

__all__ = ["CacheStore", "Entry", "SQLiteStore", "bumped_lscore", "decayed_score"]

DEFAULT_HALF_LIFE = 86_400.0
DEFAULT_MAX_ENTRY_BYTES = 1 << 20


def decayed_score(lscore: float, now: float, half_life: float) -> float:
    """The reuse score now, from its time-shifted log form ``log2(score) + t/half_life``.

    Every score halves each ``half_life`` seconds; storing ``lscore`` instead of the score makes
    the eviction order independent of time, so an index on it finds the victim directly.
    """
    exponent = lscore - now / half_life
    return math.inf if exponent > 1000 else float(2.0**exponent)


def bumped_lscore(lscore: float | None, now: float, half_life: float, weight: float) -> float:
    """``lscore`` after adding ``weight`` to the decayed score at ``now``."""
    shift = now / half_life
    if lscore is None:
        return math.log2(weight) + shift
    d = lscore - shift  # log2 of the decayed score, kept in the log domain to never overflow
    if d > 60:
        return lscore + math.log2(1.0 + weight * 2.0 ** (-d))
    return math.log2(2.0**d + weight) + shift


@dataclass
class Entry:
    """One cached subgoal: the artifact, who verified it, where it came from, how it is used.

    ``artifact`` holds ``result`` (text), optionally ``steps`` (proof steps) and ``code``;
    ``verifier``/``verifier_hash`` name the check run on every hit; ``provenance`` records
    workflow, project, branch and time of admission; ``workflows`` every workflow (or project)
    that admitted or reused it; ``lscore`` the time-shifted log reuse score used for eviction.
    """

    key: str
    kind: str
    artifact: dict[str, Any]
    verifier: str
    verifier_hash: str
    provenance: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    workflows: list[str] = field(default_factory=list)
    hits: int = 0
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    lscore: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Entry:
        return cls(**json.loads(text))

    def check_size(self, max_bytes: int) -> int:
        size = len(json.dumps(self.artifact, separators=(",", ":")))
        if size > max_bytes:
            msg = (
                f"cache entry artifact is {size} bytes, over the store's limit of "
                f"{max_bytes} bytes; not stored"
            )
            raise ExpressionTooLargeError(msg)
        return size


class CacheStore(ABC):
    """Where entries, sightings and checkpoints live. Every method is atomic.

    ``put`` never overwrites an existing artifact: entries are content-addressed, so two writers
    of one key wrote two verified answers to the same question and the first one stays; the
    second only adds its workflow to ``workflows``.
    """

    half_life: float = DEFAULT_HALF_LIFE
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    name: str = "store"

    @abstractmethod
    def get(self, key: str) -> Entry | None:
        """The entry stored under ``key``, or ``None``."""

    @abstractmethod
    def put(self, entry: Entry) -> Entry:
        """Store ``entry`` unless ``key`` exists; return the stored entry either way."""

    @abstractmethod
    def touch(self, key: str, origin: str, now: float | None = None) -> None:
        """Record a reuse of ``key`` by ``origin`` (a workflow or project id)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""

    @abstractmethod
    def sight(self, key: str, origin: str) -> int:
        """Record that ``origin`` asked for ``key``; return how many origins have asked."""

    @abstractmethod
    def evict(self, capacity: int) -> list[str]:
        """Remove the lowest-scoring entries until at most ``capacity`` remain; their keys."""

    @abstractmethod
    def lowest(self) -> tuple[str, float] | None:
        """The entry eviction would remove first, with its lscore."""

    @abstractmethod
    def count(self) -> int:
        """How many entries are stored."""

    @abstractmethod
    def save_checkpoint(self, chain: str, index: int, payload: dict[str, Any]) -> None:
        """Store checkpoint ``index`` of ``chain`` (overwrites that index)."""

    @abstractmethod
    def checkpoints(self, chain: str) -> list[tuple[int, dict[str, Any]]]:
        """Every checkpoint of ``chain``, by index."""

    @abstractmethod
    def drop_checkpoints(self, chain: str, after: int) -> None:
        """Remove the checkpoints of ``chain`` with an index above ``after``."""

    def get_alias(self, key: str) -> dict[str, Any] | None:
        """The alias stored under ``key``. Aliases (exact spelling → canonical-form maps) live
        beside the checkpoints, not among the entries: they are neither counted nor evicted."""
        found = self.checkpoints(f"alias:{key}")
        return found[0][1] if found else None

    def put_alias(self, key: str, payload: dict[str, Any]) -> None:
        """Store an alias (overwrites: an alias is a pure function of its key)."""
        self.save_checkpoint(f"alias:{key}", 0, payload)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SQLiteStore(CacheStore):
    """The default store: one SQLite file (WAL), safe across threads and processes.

    Parameters
    ----------
    path:
        The database file, e.g. ``$COREASON_HOME/cache.sqlite``.
    half_life:
        Seconds for an unused entry's reuse score to halve.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        half_life: float = DEFAULT_HALF_LIFE,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.half_life = half_life
        self.max_entry_bytes = max_entry_bytes
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            msg = f"cannot open the cache database {self.path}: {e}"
            raise CacheBackendError(msg) from e

    def _tx(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db, *args)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return out
            except sqlite3.Error as e:
                msg = f"cache database {self.path} failed: {e}; nothing was applied"
                raise CacheBackendError(msg) from e

    def _read(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                return fn(self._db, *args)
            except sqlite3.Error as e:
                msg = f"cache database {self.path} failed: {e}"
                raise CacheBackendError(msg) from e

    def get(self, key: str) -> Entry | None:
        def run(db: sqlite3.Connection) -> Entry | None:
            row = db.execute("SELECT body FROM entries WHERE key = ?", (key,)).fetchone()
            return None if row is None else Entry.from_json(row[0])

        out: Entry | None = self._read(run)
        return out

    def put(self, entry: Entry) -> Entry:
        entry.check_size(self.max_entry_bytes)
        now = time.time()

        def run(db: sqlite3.Connection) -> Entry:
            row = db.execute("SELECT body FROM entries WHERE key = ?", (entry.key,)).fetchone()
            if row is None:
                entry.lscore = bumped_lscore(
                    None, now, self.half_life, 1.0 + 0.5 * max(0, len(entry.workflows) - 1)
                )
                db.execute(
                    "INSERT INTO entries(key, lscore, body) VALUES (?, ?, ?)",
                    (entry.key, entry.lscore, entry.to_json()),
                )
                return entry
            stored = Entry.from_json(row[0])
            new = [w for w in entry.workflows if w not in stored.workflows]
            if new:
                stored.workflows.extend(new)
                stored.lscore = bumped_lscore(stored.lscore, now, self.half_life, 1.0 * len(new))
                db.execute(
                    "UPDATE entries SET lscore = ?, body = ? WHERE key = ?",
                    (stored.lscore, stored.to_json(), entry.key),
                )
            return stored

        out: Entry = self._tx(run)
        return out

    def touch(self, key: str, origin: str, now: float | None = None) -> None:
        at = time.time() if now is None else now

        def run(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT body FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return
            stored = Entry.from_json(row[0])
            weight = 1.0
            if origin and origin not in stored.workflows:
                stored.workflows.append(origin)
                weight = 2.0  # reuse across workflows counts double
            stored.hits += 1
            stored.last_used = at
            stored.lscore = bumped_lscore(stored.lscore, at, self.half_life, weight)
            db.execute(
                "UPDATE entries SET lscore = ?, body = ? WHERE key = ?",
                (stored.lscore, stored.to_json(), key),
            )

        self._tx(run)

    def delete(self, key: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount > 0

        out: bool = self._tx(run)
        return out

    def sight(self, key: str, origin: str) -> int:
        def run(db: sqlite3.Connection) -> int:
            db.execute("INSERT OR IGNORE INTO sightings(key, origin) VALUES (?, ?)", (key, origin))
            return int(
                db.execute("SELECT COUNT(*) FROM sightings WHERE key = ?", (key,)).fetchone()[0]
            )

        out: int = self._tx(run)
        return out

    def evict(self, capacity: int) -> list[str]:
        def run(db: sqlite3.Connection) -> list[str]:
            n = int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
            if n <= capacity:
                return []
            rows = db.execute(
                "SELECT key FROM entries ORDER BY lscore ASC LIMIT ?", (n - capacity,)
            ).fetchall()
            keys = [r[0] for r in rows]
            db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])
            db.executemany("DELETE FROM sightings WHERE key = ?", [(k,) for k in keys])
            return keys

        out: list[str] = self._tx(run)
        return out

    def lowest(self) -> tuple[str, float] | None:
        def run(db: sqlite3.Connection) -> tuple[str, float] | None:
            row = db.execute(
                "SELECT key, lscore FROM entries ORDER BY lscore ASC LIMIT 1"
            ).fetchone()
            return None if row is None else (str(row[0]), float(row[1]))

        out: tuple[str, float] | None = self._read(run)
        return out

    def count(self) -> int:
        out: int = self._read(
            lambda db: int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        )
        return out

    def save_checkpoint(self, chain: str, index: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True)
        self._tx(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO checkpoints(chain, idx, body) VALUES (?, ?, ?)",
                (chain, index, body),
            )
        )

    def checkpoints(self, chain: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self._read(
            lambda db: db.execute(
                "SELECT idx, body FROM checkpoints WHERE chain = ? ORDER BY idx", (chain,)
            ).fetchall()
        )
        return [(int(i), json.loads(b)) for i, b in rows]

    def drop_checkpoints(self, chain: str, after: int) -> None:
        self._tx(
            lambda db: db.execute(
                "DELETE FROM checkpoints WHERE chain = ? AND idx > ?", (chain, after)
            )
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    lscore REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_lscore ON entries(lscore);
CREATE TABLE IF NOT EXISTS sightings (
    key TEXT NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (key, origin)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    chain TEXT NOT NULL,
    idx INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (chain, idx)
);
"""
