"""The subgoal cache: verified hits across variants, admission, events, hit ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sympy
from coreason_runtime import EventBus, EventType
from coreason_runtime.cache import SQLiteStore, SubgoalCache, numeric_equal
from coreason_runtime.cache._codec import to_tree

x, y, s = sympy.symbols("x y s")


def test_a_renamed_shifted_scaled_integral_hits_with_the_result_in_its_own_names(
    cache: SubgoalCache,
) -> None:
    cache.solve("integrate(x**2*exp(2*x+1), x)", workflow_id="w1")
    hit = cache.get("integrate(7*exp(2*y+1)*y**2, y)", workflow_id="w2")
    assert hit is not None
    assert hit.value.free_symbols == {y}
    assert numeric_equal(sympy.diff(hit.value, y), 7 * sympy.exp(2 * y + 1) * y**2)


def test_an_affine_argument_hit_maps_the_substitution_back(cache: SubgoalCache) -> None:
    cache.solve("integrate(sin(2*x+1)*cos(2*x+1), x)", workflow_id="w1")
    hit = cache.get("integrate(sin(3*s-5)*cos(3*s-5), s)", workflow_id="w2")
    assert hit is not None
    assert numeric_equal(sympy.diff(hit.value, s), sympy.sin(3 * s - 5) * sympy.cos(3 * s - 5))


def test_a_tampered_entry_is_never_returned(cache: SubgoalCache, home: Path) -> None:
    form = cache.canonical("integrate(cos(x), x)")
    cache.put(form, sympy.sin(x), workflow_id="w1")
    db = SQLiteStore(home / "cache.sqlite")
    entry = db.get(form.key)
    assert entry is not None
    entry.artifact["result"] = to_tree(sympy.cos(sympy.Symbol("$b0")))  # a wrong answer
    db.delete(form.key)
    db.put(entry)
    db.close()
    assert cache.get("integrate(cos(y), y)") is None
    assert cache.false_hits_blocked == 1


def test_a_wrong_result_is_not_admitted(cache: SubgoalCache) -> None:
    assert cache.put("integrate(cos(x), x)", sympy.cos(x), workflow_id="w1") is None
    assert cache.store.count() == 0


def test_solve_computes_once_then_hits(cache: SubgoalCache) -> None:
    calls: list[sympy.Basic] = []

    def compute(problem: sympy.Basic) -> sympy.Basic:
        calls.append(problem)
        return problem.doit()

    cache.solve("diff(sin(3*t+2), t)", workflow_id="w1", compute=compute)
    cache.solve("diff(sin(5*q), q)", workflow_id="w1", compute=compute)
    assert len(calls) == 1


def test_equation_solutions_are_reused_across_scaling(cache: SubgoalCache) -> None:
    cache.solve("x**2 - 4 = 0", "solve", workflow_id="w1", compute=lambda e: sympy.solve(e))
    hit = cache.get("2*y**2 = 8", "solve")
    assert hit is not None and sorted(hit.value) == [-2, 2]


def test_events_report_miss_admit_and_hit(cache: SubgoalCache, bus: EventBus) -> None:
    cache.solve("integrate(x*sin(x), x)", workflow_id="w1")
    cache.get("integrate(y*sin(y), y)", workflow_id="w2")
    types = [e.type for e in bus.history(["cache"])]
    assert types == [EventType.CACHE_MISS, EventType.CACHE_ADMIT, EventType.CACHE_HIT]
    hit = bus.history([EventType.CACHE_HIT])[0]
    assert hit.data.cross_workflow is True and hit.workflow_id == "w2"


def test_when_full_a_subgoal_seen_by_many_workflows_displaces_a_single_use_one(
    home: Path, bus: EventBus
) -> None:
    cache = SubgoalCache(SQLiteStore(home / "small.sqlite"), bus=bus, capacity=1)
    cache.solve("diff(x**3, x)", workflow_id="w1")
    assert cache.put("diff(cos(x), x)", -sympy.sin(x), workflow_id="w1") is None
    for wf in ("w2", "w3", "w4"):
        cache.get("diff(sin(x), x)", workflow_id=wf)
    assert cache.put("diff(sin(x), x)", sympy.cos(x), workflow_id="w5") is not None
    assert cache.get("diff(sin(y), y)") is not None
    assert cache.get("diff(y**3, y)") is None
    assert bus.history([EventType.CACHE_EVICT])[0].data.count == 1


def test_hit_ratio_is_reported_by_kind(cache: SubgoalCache) -> None:
    cache.solve("diff(x**3, x)", workflow_id="w1")
    cache.get("diff(y**3, y)")
    cache.get("integrate(y**3, y)")
    assert cache.hit_ratio("derivative") == 0.5
    assert cache.hit_ratio("integral") == 0.0
    assert cache.hit_ratio() == 1 / 3


def test_lookup_accepts_a_scheduler_task_signature(cache: SubgoalCache) -> None:
    cache.solve("Limit(sin(x)/x, x, 0)", workflow_id="w1")
    assert cache.lookup("Limit(sin(t)/t, t, 0)") is not None
    assert cache.lookup(("limit", sympy.Limit(sympy.sin(y) / y, y, 0))) is not None
    assert cache.lookup("summarise the related work") is None


def test_an_entry_records_provenance_and_verifier(cache: SubgoalCache) -> None:
    entry = cache.put(
        "diff(x**2, x)", 2 * x, workflow_id="w1", project="p", code="sympy.diff(x**2, x)"
    )
    assert entry is not None
    assert entry.provenance["workflow_id"] == "w1" and entry.provenance["project"] == "p"
    assert entry.verifier == cache.verifier.name
    assert entry.verifier_hash == cache.verifier.version
    assert json.loads(entry.to_json())["artifact"]["code"] == "sympy.diff(x**2, x)"


@pytest.mark.redis
def test_a_cache_on_redis_shares_entries_between_two_workers(redis_url: str, bus: EventBus) -> None:
    from coreason_runtime.cache import RedisStore

    a = SubgoalCache(RedisStore(redis_url), bus=bus)
    b = SubgoalCache(RedisStore(redis_url), bus=bus)
    a.solve("integrate(exp(2*x)*x, x)", workflow_id="worker-a")
    assert b.get("integrate(exp(2*y)*y, y)", workflow_id="worker-b") is not None


def test_an_exact_repeat_in_another_kernel_skips_canonicalisation_but_is_verified(
    home: Path, bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coreason_runtime.cache import _subgoal

    first = SubgoalCache(SQLiteStore(home / "shared.sqlite"), bus=bus)
    first.solve("integrate(x*cos(3*x), x)", workflow_id="kernel-1")

    def refuse(*args: object) -> None:
        raise AssertionError("canonicalised again")

    monkeypatch.setattr(_subgoal, "_canonical_memo", refuse)
    second = SubgoalCache(SQLiteStore(home / "shared.sqlite"), bus=bus)
    checks: list[bool] = []
    original_check = second.verifier.check
    monkeypatch.setattr(
        second.verifier, "check", lambda f, r: checks.append(True) or original_check(f, r)
    )
    hit = second.get("integrate(x*cos(3*x), x)", workflow_id="kernel-2")
    assert hit is not None and checks == [True]
