"""The routing history: one row per tier tried per request, in SQLite under $COREASON_HOME,
and one per field a span tier was asked for (what the gate on span escalation learns from).

The policy is re-learned from it when a runtime starts (the most recent rows, in order), so
what a thousand requests taught survives a restart; ``coreason tiers`` reads each tier's
observed success rate and cost from it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from coreason_runtime._exceptions import ConfigurationError
from coreason_runtime.route._outcome import TierOutcome

__all__ = ["HistoryRow", "HistoryStore", "TierStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    workflow_id TEXT,
    policy TEXT NOT NULL,
    family TEXT NOT NULL,
    tier TEXT NOT NULL,
    position INTEGER NOT NULL,
    features TEXT NOT NULL,
    k_req REAL NOT NULL,
    success INTEGER NOT NULL,
    cost REAL NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_tier ON outcomes(tier);
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    workflow_id TEXT,
    family TEXT NOT NULL,
    tier TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    cost REAL NOT NULL
);
"""


@dataclass(frozen=True)
class HistoryRow:
    """One tier's outcome on one request, with the features the policy saw."""

    family: str
    tier: str
    position: int
    features: list[float]
    k_req: float
    success: bool
    cost: float


@dataclass(frozen=True)
class TierStats:
    """What a tier did so far: requests, successes, C and tokens (for ``coreason tiers``)."""

    tier: str
    requests: int
    successes: int
    cost: float
    tokens_in: int
    tokens_out: int

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.requests if self.requests else None

    @property
    def mean_cost(self) -> float | None:
        return self.cost / self.requests if self.requests else None


class HistoryStore:
    """Tier outcomes, durable (a path) or in memory (``None``); thread-safe.

    ``keep`` bounds the rows kept (the oldest go first).

    Raises
    ------
    ConfigurationError
        The database cannot be opened.
    """

    def __init__(self, path: Path | None = None, *, keep: int = 50_000) -> None:
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()
        self._appended = 0
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                ":memory:" if path is None else str(path),
                timeout=10.0,
                check_same_thread=False,
                isolation_level=None,
            )
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                # a learning history, not a ledger: no fsync per request (WAL stays consistent;
                # a power cut may lose the last few outcomes, which the policy re-learns)
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            msg = f"cannot open the routing history at {path}: {e}"
            raise ConfigurationError(msg) from e

    def append(
        self,
        outcomes: Iterable[TierOutcome],
        *,
        features: list[float],
        family: str,
        k_req: float,
        policy: str,
        workflow_id: str | None,
    ) -> None:
        """Record every tier's outcome on one request."""
        now = time.time()
        rows = [
            (
                now,
                workflow_id,
                policy,
                family,
                o.tier,
                o.position,
                json.dumps([round(v, 6) for v in features]),
                k_req,
                int(o.success),
                o.cost,
                o.tokens_in,
                o.tokens_out,
            )
            for o in outcomes
        ]
        with self._lock:
            self._db.executemany(
                "INSERT INTO outcomes (ts, workflow_id, policy, family, tier, position, features,"
                " k_req, success, cost, tokens_in, tokens_out) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            self._appended += len(rows)
            if self._appended >= 1000:  # trim now and then, not on every request
                self._appended = 0
                self._db.execute(
                    "DELETE FROM outcomes WHERE seq <= (SELECT MAX(seq) FROM outcomes) - ?",
                    (self.keep,),
                )

    def append_spans(
        self, family: str, spans: Iterable[tuple[str, bool, float]], workflow_id: str | None
    ) -> None:
        """Record span tiers' field answers on one request: ``(tier, accepted, C)`` each."""
        now = time.time()
        rows = [(now, workflow_id, family, t, int(ok), c) for t, ok, c in spans]
        if not rows:
            return
        with self._lock:
            self._db.executemany(
                "INSERT INTO spans (ts, workflow_id, family, tier, accepted, cost)"
                " VALUES (?,?,?,?,?,?)",
                rows,
            )
            self._db.execute(
                "DELETE FROM spans WHERE seq <= (SELECT MAX(seq) FROM spans) - ?", (self.keep,)
            )

    def recent_spans(self, limit: int) -> list[tuple[str, str, bool]]:
        """The last ``limit`` span answers, oldest first: ``(family, tier, accepted)``."""
        with self._lock:
            cur = self._db.execute(
                "SELECT family, tier, accepted FROM spans ORDER BY seq DESC LIMIT ?", (limit,)
            )
            rows = cur.fetchall()
        return [(f, t, bool(a)) for f, t, a in rows[::-1]]

    def recent(self, limit: int) -> list[HistoryRow]:
        """The last ``limit`` rows, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT family, tier, position, features, k_req, success, cost FROM outcomes"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
            rows = cur.fetchall()
        return [
            HistoryRow(f, t, p, json.loads(x), k, bool(s), c) for f, t, p, x, k, s, c in rows[::-1]
        ]

    def stats(self) -> dict[str, TierStats]:
        """Per tier: requests, successes, C and tokens over the history kept."""
        with self._lock:
            cur = self._db.execute(
                "SELECT tier, COUNT(*), SUM(success), SUM(cost), SUM(tokens_in), SUM(tokens_out)"
                " FROM outcomes GROUP BY tier"
            )
            rows = cur.fetchall()
        return {
            t: TierStats(t, n, int(s or 0), float(c or 0.0), int(i or 0), int(o or 0))
            for t, n, s, c, i, o in rows
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
