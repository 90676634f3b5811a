"""Exact replay: a notebook's requests, answered again from its own record at no cost.

Re-running an executed notebook asks the same questions with the same seeds. A
:class:`ReplayRecord` keeps each request's outcome under a key made of everything that decides
it — the cascade's tiers with their models and revisions, the schema, the system prompt and
the prompt, the sampling parameters (temperature, output tokens, seed, tries per tier) and the
workflow — and answers a request with that key from the record: the same value, tier, model
and attempts, charged nothing. A request that ended with every tier failing is recorded too,
so the Oracle Circuit opens again without the failed attempts being paid for twice.

Unlike the subgoal cache, replay is exact (a different seed or token limit is a different
request), kept per notebook (``$COREASON_HOME/replay/<notebook>.sqlite``), and never changes
an answer: nothing is recorded but what the tiers really returned. A budget refusal or an
abort is never recorded (they depend on the ledger, not on the request).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import EpistemicYieldError
from coreason_runtime.tensor._types import Attempt, BaseTier, Result, Tier

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.tensor._attempts import RequestPlan
    from coreason_runtime.tensor._schema import SchemaSpec
    from coreason_runtime.verify import VerifyPolicy

__all__ = ["ReplayRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def _slug(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem).strip("-")[:40] or "notebook"
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


class ReplayRecord:
    """The recorded outcomes of one notebook's requests.

    Off (``enabled`` False, no file) until :meth:`use` names a notebook. The router consults it
    before anything else (:meth:`answer`).

    Parameters
    ----------
    folder:
        Where records live (``$COREASON_HOME/replay``).
    bus:
        Where a replayed request's ``request.started`` / ``.finished`` (or ``.yielded``) go.
    """

    def __init__(self, folder: Path, bus: EventBus | None = None) -> None:
        self.folder = folder
        self.bus = bus if bus is not None else EventBus()
        self.notebook: str | None = None
        self.enabled = False
        self.hits = 0
        self.recorded = 0
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> ReplayRecord:
        """The runtime's record (off until a notebook turns it on)."""
        return cls(rt.home / "replay", rt.bus)

    # --- switching -------------------------------------------------------------------------

    def use(self, notebook: str, *, enabled: bool = True) -> ReplayRecord:
        """Record (and replay) under ``notebook``'s name, e.g. its path."""
        with self._lock:
            if self._db is not None and notebook != self.notebook:
                self._db.close()
                self._db = None
            self.notebook = notebook
            if self._db is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
                self._db = db
            self.enabled = enabled
        return self

    @property
    def path(self) -> Path:
        """The record's file (for the notebook in use)."""
        return self.folder / f"{_slug(self.notebook or 'session')}.sqlite"

    def clear(self) -> int:
        """Forget every recorded answer of this notebook; returns how many there were."""
        with self._lock:
            if self._db is None:
                return 0
            n = int(self._db.execute("SELECT COUNT(*) FROM replay").fetchone()[0])
            self._db.execute("DELETE FROM replay")
            return n

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            return int(self._db.execute("SELECT COUNT(*) FROM replay").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self.enabled = False

    # --- the key -----------------------------------------------------------------------------

    @staticmethod
    def key(
        spec: SchemaSpec, plan: RequestPlan, cascade: Sequence[Tier], system: str, k_max: int
    ) -> str:
        """The digest of everything that decides a request's outcome."""
        parts = {
            "v": 1,
            "tiers": [
                [t.name, t.model_name, t.revision if isinstance(t, BaseTier) else None]
                for t in cascade
            ],
            "schema": spec.key,
            "system": system,
            "prompt": plan.prompt,
            "max_tokens": plan.max_tokens,
            "temperature": plan.temperature,
            "seed": plan.seed,
            "k_max": k_max,
            "workflow": plan.workflow_id,
            "verify": _policy_key(plan.verify),
        }
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    # --- answering ---------------------------------------------------------------------------

    def answer(
        self,
        key: str,
        spec: SchemaSpec,
        plan: RequestPlan,
        tiers: list[str],
        run: Callable[[], Result[Any]],
    ) -> Result[Any]:
        """The recorded outcome of ``key``, or ``run()``'s (recorded for next time).

        Raises
        ------
        EpistemicYieldError
            Recorded (or just now): every tier failed for this request.
        """
        if not self.enabled:
            return run()
        row = self._get(key)
        if row is not None:
            self.hits += 1
            return self._replay(row, spec, plan, tiers)
        try:
            result = run()
        except EpistemicYieldError as e:
            self._put(key, "yield", {"message": e.message, "attempts": _dump(e.attempts)})
            raise
        self._put(key, "result", _result_body(result))
        return result

    def _replay(
        self, row: tuple[str, str], spec: SchemaSpec, plan: RequestPlan, tiers: list[str]
    ) -> Result[Any]:
        kind, text = row
        body = json.loads(text)
        wf = plan.workflow_id
        attempts = [Attempt(**a) for a in body["attempts"]]
        self.bus.emit(
            EventType.REQUEST_STARTED,
            workflow_id=wf,
            source="replay",
            schema_name=spec.name,
            schema_key=spec.key,
            tiers=tiers,
        )
        if kind == "yield":
            self.bus.emit(
                EventType.YIELDED,
                workflow_id=wf,
                source="replay",
                cost=0.0,
                attempts=body["attempts"],
                schema_name=spec.name,
            )
            raise EpistemicYieldError(
                f"{body['message']} (replayed from this notebook's record: nothing charged)",
                workflow_id=wf,
                attempts=attempts,
                schema=spec.json_schema,
                prompt=plan.prompt,
                spec=spec,
            )
        self.bus.emit(
            EventType.REQUEST_FINISHED,
            workflow_id=wf,
            source="replay",
            tier=body["tier"],
            cost=0.0,
            attempts=len(attempts),
            duration_s=0.0,
        )
        return Result(
            value=spec.validate_text(body["value"]),
            tier=body["tier"],
            attempts=attempts,
            cost=0.0,
            workflow_id=wf,
            text=body["text"],
            model=body["model"],
            seed=body["seed"],
            schema_key=body["schema_key"],
            revision=body["revision"],
            verified=bool(body.get("verified", False)),
            replayed=True,
        )

    def _get(self, key: str) -> tuple[str, str] | None:
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute("SELECT kind, body FROM replay WHERE key=?", (key,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _put(self, key: str, kind: str, body: dict[str, Any]) -> None:
        with self._lock:
            if self._db is None:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO replay(key, kind, body, created) VALUES(?,?,?,?)",
                (key, kind, json.dumps(body), time.time()),
            )
            self.recorded += 1

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"<ReplayRecord {self.notebook!r} {state} hits={self.hits}>"


def _dump(attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in attempts]


def _result_body(result: Result[Any]) -> dict[str, Any]:
    value = result.value
    text = value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)
    return {
        "value": text,
        "tier": result.tier,
        "attempts": _dump(result.attempts),
        "text": result.text,
        "model": result.model,
        "seed": result.seed,
        "schema_key": result.schema_key,
        "revision": result.revision,
        "verified": result.verified,
    }


def _policy_key(policy: VerifyPolicy | None) -> Any:
    """What of a request's verifiers decides its outcome, described by value (types, fields,
    functions by name), so the same verifiers key alike in every kernel."""
    if policy is None:
        return None
    return {
        "checks": [_described(c) for c in policy.checks],
        "candidates": policy.candidates,
        "temperatures": list(policy.temperatures),
        "repair": policy.repair,
        "span_tiers": None if policy.span_tiers is None else list(policy.span_tiers),
        "repair_tokens": policy.repair_tokens,
    }


def _described(obj: Any, depth: int = 0) -> Any:
    """``obj`` as plain JSON by value: no memory addresses, so stable across processes."""
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if depth > 6:
        return type(obj).__qualname__
    if isinstance(obj, list | tuple | set | frozenset):
        items = [_described(x, depth + 1) for x in obj]
        return sorted(items, key=repr) if isinstance(obj, set | frozenset) else items
    if isinstance(obj, dict):
        return {str(k): _described(v, depth + 1) for k, v in sorted(obj.items(), key=repr)}
    if callable(obj) and hasattr(obj, "__qualname__"):  # a function: by its name
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    if hasattr(obj, "__dict__"):
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        return [kind, _described(vars(obj), depth + 1)]
    return repr(obj)  # SymPy expressions and other slotted values print by value
