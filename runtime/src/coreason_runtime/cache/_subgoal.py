"""The subgoal cache (SCCH): canonical keys, verified hits, cross-workflow admission, events."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sympy

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import CacheBackendError, CacheError
from coreason_runtime.cache._canonical import CanonicalForm, canonicalize
from coreason_runtime.cache._codec import form_from_tree, form_to_tree, from_tree, to_tree
from coreason_runtime.cache._hits import CacheHit, HitCounts
from coreason_runtime.cache._normal import evaluated
from coreason_runtime.cache._parse import DEFAULT_LIMITS, Limits, check_size, safe_parse
from coreason_runtime.cache._prompt import PromptForm, canonical_prompt, map_value_json
from coreason_runtime.cache._requests import RequestVerifier, auto_request_verifier
from coreason_runtime.cache._store import CacheStore, Entry, SQLiteStore, decayed_score
from coreason_runtime.cache._verify import SympyVerifier, Verifier, verifier_hash

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["CacheHit", "RequestVerifier", "SubgoalCache"]


class SubgoalCache:
    """Consult before any model or tool call; every hit is verified before it is returned.

    SymPy subgoals (:meth:`get`, :meth:`put`, :meth:`solve`) key on their canonical form, so a
    renamed, reordered, rescaled or shifted variant hits; the cached result is mapped back to
    the caller's names and checked numerically by the verifier. Model requests
    (:meth:`lookup_request`, :meth:`admit_request`) key on the prompt's canonical form.

    Admission: while the store has room everything verified is admitted. When full, a new
    entry is admitted only if the entry eviction would remove has gone stale (its reuse score
    fell below 0.5, i.e. more than a half-life without use) or if the new subgoal was asked
    for by at least two distinct workflows or projects and its score (1 + 0.5 per extra
    origin) beats the victim's. Eviction removes the lowest reuse score; a score gains 1 per
    reuse (2 when the reuse comes from a new workflow) and halves every ``store.half_life``
    seconds.

    Parameters
    ----------
    store:
        A :class:`CacheStore` (SQLite by default, Redis for many workers).
    bus:
        Where hit/miss/admit/evict events go.
    capacity:
        The most entries kept.
    """

    def __init__(
        self,
        store: CacheStore,
        *,
        bus: EventBus | None = None,
        verifier: Verifier | None = None,
        capacity: int = 100_000,
        limits: Limits = DEFAULT_LIMITS,
        source: str = "cache",
    ) -> None:
        self.store = store
        self.bus = bus
        self.verifier: Verifier = verifier or SympyVerifier()
        self.capacity = capacity
        self.limits = limits
        self.source = source
        self._lock = threading.Lock()
        self._counts = HitCounts()
        self._verdicts: dict[tuple[Any, ...], bool] = {}
        self._request_verifiers: dict[str, tuple[RequestVerifier, str]] = {
            "auto": (auto_request_verifier, verifier_hash(auto_request_verifier)),
        }

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> SubgoalCache:
        """SQLite in ``$COREASON_HOME/cache.sqlite``; with ``rt.config.redis_url`` set, Redis
        first and that SQLite file while Redis is unreachable."""
        local = SQLiteStore(Path(rt.home) / "cache.sqlite")
        store: CacheStore = local
        url = rt.config.redis_url
        if url:
            from coreason_runtime.cache._redis import FallbackStore, RedisStore

            store = FallbackStore(RedisStore(url), local)
        return cls(store, bus=rt.bus)

    # --- bookkeeping -------------------------------------------------------------------------

    def _emit(self, type_: EventType, workflow_id: str | None, **data: Any) -> None:
        if self.bus is not None:
            self.bus.emit(type_, workflow_id=workflow_id, source=self.source, **data)

    @property
    def false_hits_blocked(self) -> int:
        """Cached results that failed verification, so were never returned."""
        return self._counts.false_hits_blocked

    def hit_ratio(self, kind: str | None = None) -> float:
        """Hits / lookups so far (this process), overall or for one ``kind`` (``"integral"``,
        ``"derivative"``, ``"request"``, ``"step"`` …); 0.0 before any lookup."""
        return self._counts.ratio(kind)

    def stats(self) -> dict[str, Any]:
        """Counts by kind, blocked false hits and the number of stored entries."""
        return {
            "by_kind": self._counts.by_kind(),
            "hit_ratio": self.hit_ratio(),
            "false_hits_blocked": self.false_hits_blocked,
            "entries": self.store.count(),
        }

    # --- SymPy subgoals ----------------------------------------------------------------------

    def canonical(self, problem: str | sympy.Basic, op: str | None = None) -> CanonicalForm:
        """The canonical form (and key) of ``problem`` under this cache's verifier.

        A problem met before *in exactly this spelling* (by any kernel sharing the store) is
        found through its alias — the stored maps of its canonical form — without redoing the
        canonicalisation; every hit is still verified.
        """
        if isinstance(problem, str):
            original = evaluated(safe_parse(problem, limits=self.limits))
        else:
            check_size(problem, self.limits)
            original = problem
        akey, spelling = self._alias_key(original, op)
        try:
            alias = self.store.get_alias(akey)
        except CacheBackendError:
            alias = None
        if alias is not None and alias.get("spelling") == spelling:
            with contextlib.suppress(CacheError):
                form: CanonicalForm = form_from_tree(alias["form"], original)
                return form
        fresh = _canonical_memo(original, op, self.verifier.version, self.limits)
        self._remember_alias(fresh, akey, spelling)
        return fresh

    def _alias_key(self, original: sympy.Basic, op: str | None) -> tuple[str, str]:
        spelling = f"alias|{op}|{sympy.srepr(original)}|{self.verifier.version}"
        return hashlib.sha256(spelling.encode()).hexdigest(), spelling

    def _remember_alias(self, form: CanonicalForm, akey: str, spelling: str) -> None:
        """Store the maps of ``form`` under the exact spelling of its problem."""
        with contextlib.suppress(CacheError):
            self.store.put_alias(akey, {"spelling": spelling, "form": form_to_tree(form)})

    def get(
        self,
        problem: str | sympy.Basic | CanonicalForm,
        op: str | None = None,
        *,
        workflow_id: str | None = None,
    ) -> CacheHit | None:
        """A verified hit for ``problem`` (result in the caller's names), or ``None``."""
        form = problem if isinstance(problem, CanonicalForm) else self.canonical(problem, op)
        entry = self.store.get(form.key)
        if entry is None or entry.text != form.text:
            self._miss(form.key, form.kind, workflow_id, "absent" if entry is None else "collision")
            return None
        try:
            stored = from_tree(entry.artifact["result"])
            result = (
                [form.to_user(r) for r in stored]
                if isinstance(stored, list)
                else form.to_user(stored)
            )
        except (CacheError, KeyError, TypeError, ValueError) as e:
            self._miss(form.key, form.kind, workflow_id, f"undecodable: {e}")
            return None
        if not self._check(form, entry, result):
            self._counts.block_false_hit()
            self._miss(form.key, form.kind, workflow_id, "verification_failed")
            return None
        return self._hit(form.key, form.kind, entry, result, workflow_id, form)

    def _check(self, form: CanonicalForm, entry: Entry, result: Any) -> bool:
        """The verifier's verdict; the same check on the same inputs is remembered, since
        it is a pure function of (problem, stored artifact, result)."""
        memo_key = (form.original, form.op, entry.key, json.dumps(entry.artifact["result"]))
        with self._lock:
            known = self._verdicts.get(memo_key)
        if known is not None:
            return known
        verdict = bool(self.verifier.check(form, result))
        with self._lock:
            if len(self._verdicts) >= 4096:
                self._verdicts.pop(next(iter(self._verdicts)))
            self._verdicts[memo_key] = verdict
        return verdict

    def put(
        self,
        problem: str | sympy.Basic | CanonicalForm,
        result: sympy.Basic,
        op: str | None = None,
        *,
        workflow_id: str,
        project: str | None = None,
        branch: str | None = None,
        steps: list[str] | None = None,
        code: str | None = None,
        verify: bool = True,
    ) -> Entry | None:
        """Admit ``result`` (in the caller's names) as the answer to ``problem``.

        The result is verified first (a wrong answer is never stored) and mapped to the
        canonical problem. Returns the stored entry, or ``None`` if verification or admission
        refused it.
        """
        form = problem if isinstance(problem, CanonicalForm) else self.canonical(problem, op)
        result = sympy.sympify(result)
        if verify and not self.verifier.check(form, result):
            self._emit(
                EventType.CACHE_ADMIT,
                workflow_id,
                key=form.key,
                kind=form.kind,
                admitted=False,
                reason="verification_failed",
                sightings=None,
                verifier=None,
            )
            return None
        canon = (
            [form.to_canonical(r) for r in result]
            if isinstance(result, (sympy.Tuple, list, tuple))
            else form.to_canonical(result)
        )
        artifact: dict[str, Any] = {"result": to_tree(canon), "problem": str(form.expr)}
        if steps is not None:
            artifact["steps"] = list(steps)
        if code is not None:
            artifact["code"] = code
        provenance = {
            "workflow_id": workflow_id,
            "project": project,
            "branch": branch,
            "problem": str(form.original),
            "admitted_at": time.time(),
        }
        return self._admit(
            form.key,
            form.kind,
            form.text,
            artifact,
            self.verifier.name,
            self.verifier.version,
            provenance,
            workflow_id,
            project,
        )

    def solve(
        self,
        problem: str | sympy.Basic,
        op: str | None = None,
        *,
        workflow_id: str,
        compute: Callable[[sympy.Basic], sympy.Basic] | None = None,
        project: str | None = None,
    ) -> sympy.Basic:
        """Get-or-compute: a verified hit, else ``compute(original)`` (default: ``doit``),
        admitted for next time."""
        form = self.canonical(problem, op)
        hit = self.get(form, workflow_id=workflow_id)
        if hit is not None:
            return hit.value  # type: ignore[no-any-return]
        assert form.original is not None
        result = compute(form.original) if compute is not None else form.original.doit()
        self.put(form, result, workflow_id=workflow_id, project=project)
        return result

    def lookup(self, task_signature: Any, *, workflow_id: str | None = None) -> CacheHit | None:
        """For a scheduler: ``(op, problem)``, a SymPy object, or text (a maths problem if it
        parses, otherwise a request under the schema key ``"task"``)."""
        if isinstance(task_signature, tuple) and len(task_signature) == 2:
            op, problem = task_signature
            return self.get(problem, op, workflow_id=workflow_id)
        if isinstance(task_signature, sympy.Basic):
            return self.get(task_signature, workflow_id=workflow_id)
        if isinstance(task_signature, str):
            try:
                form = self.canonical(task_signature)
            except CacheError:
                return self.lookup_request("task", task_signature, workflow_id=workflow_id)
            return self.get(form, workflow_id=workflow_id)
        msg = f"cannot look up a task signature of type {type(task_signature).__name__}"
        raise CacheError(msg)

    # --- model requests ----------------------------------------------------------------------

    def register_verifier(self, name: str, fn: RequestVerifier) -> None:
        """Make a request verifier available to lookups under ``name``."""
        self._request_verifiers[name] = (fn, verifier_hash(fn))

    def _prompt(self, schema_key: str, prompt: str) -> PromptForm:
        return canonical_prompt(
            schema_key, prompt, verifier_version="request-v1", limits=self.limits
        )

    def lookup_request(
        self, schema_key: str, prompt: str, *, workflow_id: str | None = None
    ) -> CacheHit | None:
        """A verified cached answer (JSON text, in this prompt's names) or ``None``.

        The key canonicalises any mathematics in the prompt, so ``differentiate x**2*sin(x)``
        and ``differentiate y**2*sin(y)`` share it; plain prose keys on normalised text.
        """
        form = self._prompt(schema_key, prompt)
        entry = self.store.get(form.key)
        if entry is None or entry.text != f"{form.template}|{form.math}":
            self._miss(form.key, "request", workflow_id, "absent" if entry is None else "collision")
            return None
        registered = self._request_verifiers.get(entry.verifier)
        if registered is None or registered[1] != entry.verifier_hash:
            self._miss(form.key, "request", workflow_id, "verifier_unavailable")
            return None
        value = map_value_json(entry.artifact["value_json"], form.back)
        try:
            ok = registered[0](prompt, value)
        except (CacheError, ValueError, TypeError, ArithmeticError):
            ok = False
        if not ok:
            self._counts.block_false_hit()
            self._miss(form.key, "request", workflow_id, "verification_failed")
            return None
        return self._hit(form.key, "request", entry, value, workflow_id, form)

    def admit_request(
        self,
        schema_key: str,
        prompt: str,
        value_json: str,
        workflow_id: str,
        verifier: str | RequestVerifier = "auto",
        *,
        project: str | None = None,
    ) -> bool:
        """Offer a validated model answer to the cache; True if it was admitted.

        ``verifier`` is a registered name or a callable ``(prompt, value_json) -> bool`` (it
        is registered under its qualified name; a process that looks the entry up must have
        registered the same callable, else the entry is a miss there). The ``"auto"``
        verifier checks a derivative, antiderivative, solution or simplification in the answer
        against the prompt's own expression, and otherwise that the answer is valid JSON.
        """
        if callable(verifier):
            name = f"{getattr(verifier, '__module__', '')}.{getattr(verifier, '__qualname__', '')}"
            self.register_verifier(name, verifier)
            verifier = name
        if verifier not in self._request_verifiers:
            msg = f"unknown request verifier {verifier!r}; register it first"
            raise CacheError(msg)
        fn, vhash = self._request_verifiers[verifier]
        if not fn(prompt, value_json):
            self._emit(
                EventType.CACHE_ADMIT,
                workflow_id,
                key=None,
                kind="request",
                admitted=False,
                reason="verification_failed",
                sightings=None,
                verifier=None,
            )
            return False
        form = self._prompt(schema_key, prompt)
        artifact = {
            "value_json": map_value_json(value_json, form.forward),
            "template": form.template,
        }
        provenance = {
            "workflow_id": workflow_id,
            "project": project,
            "schema_key": schema_key,
            "admitted_at": time.time(),
        }
        entry = self._admit(
            form.key,
            "request",
            f"{form.template}|{form.math}",
            artifact,
            verifier,
            vhash,
            provenance,
            workflow_id,
            project,
        )
        return entry is not None

    # --- shared paths ------------------------------------------------------------------------

    def _miss(self, key: str, kind: str, workflow_id: str | None, reason: str) -> None:
        self._counts.count(kind, hit=False)
        if workflow_id:
            # a sighting is advisory; the miss itself is still reported
            with contextlib.suppress(CacheBackendError):
                self.store.sight(key, workflow_id)
        self._emit(EventType.CACHE_MISS, workflow_id, key=key, kind=kind, reason=reason)

    def _hit(
        self,
        key: str,
        kind: str,
        entry: Entry,
        value: Any,
        workflow_id: str | None,
        form: CanonicalForm | PromptForm,
    ) -> CacheHit:
        self._counts.count(kind, hit=True)
        cross = bool(workflow_id) and workflow_id not in entry.workflows
        self.store.touch(key, workflow_id or "")
        self._emit(
            EventType.CACHE_HIT,
            workflow_id,
            key=key,
            kind=kind,
            cross_workflow=cross,
            admitted_by=entry.provenance.get("workflow_id"),
            verifier=entry.verifier,
        )
        return CacheHit(
            key=key, kind=kind, value=value, entry=entry, cross_workflow=cross, form=form
        )

    def _admit(
        self,
        key: str,
        kind: str,
        text: str,
        artifact: dict[str, Any],
        verifier: str,
        vhash: str,
        provenance: dict[str, Any],
        workflow_id: str,
        project: str | None,
    ) -> Entry | None:
        origins = [workflow_id] + ([f"project:{project}"] if project else [])
        sightings = max(1, self.store.sight(key, workflow_id))
        provenance["sightings"] = sightings
        entry = Entry(
            key=key,
            kind=kind,
            artifact=artifact,
            verifier=verifier,
            verifier_hash=vhash,
            provenance=provenance,
            text=text,
            workflows=origins,
        )
        if not _admissible(self.store, self.capacity, key, sightings):
            self._emit(
                EventType.CACHE_ADMIT,
                workflow_id,
                key=key,
                kind=kind,
                admitted=False,
                reason="score_below_victim",
                sightings=sightings,
                verifier=None,
            )
            return None
        stored = self.store.put(entry)
        self._emit(
            EventType.CACHE_ADMIT,
            workflow_id,
            key=key,
            kind=kind,
            admitted=True,
            reason=None,
            sightings=sightings,
            verifier=verifier,
        )
        evicted = self.store.evict(self.capacity)
        if evicted:
            self._emit(EventType.CACHE_EVICT, workflow_id, keys=evicted, count=len(evicted))
        return stored

    def close(self) -> None:
        self.store.close()


@functools.lru_cache(maxsize=4096)
def _canonical_memo(
    problem: str | sympy.Basic, op: str | None, version: str, limits: Limits
) -> CanonicalForm:
    """Canonicalisation is a pure function of its inputs: remember recent ones."""
    return canonicalize(problem, op, verifier_version=version, limits=limits)


def _admissible(store: CacheStore, capacity: int, key: str, sightings: int) -> bool:
    """Whether a new entry seen by ``sightings`` origins may enter the store.

    While the store has room (or already holds ``key``), yes. When full, only if the entry
    eviction would remove has gone stale (its score fell below 0.5) or if the new entry was
    asked for by at least two origins and its score (1 + 0.5 per extra origin) beats it.
    """
    if store.count() < capacity or store.get(key) is not None:
        return True
    lowest = store.lowest()
    victim = 0.0 if lowest is None else decayed_score(lowest[1], time.time(), store.half_life)
    mine = 1.0 + 0.5 * (sightings - 1)
    return victim < 0.5 or (sightings >= 2 and mine > victim)
