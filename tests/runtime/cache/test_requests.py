"""Router-facing API: lookup_request / admit_request on canonical prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import CacheError, ExpressionTooLargeError
from coreason_runtime.cache import SQLiteStore, SubgoalCache, canonical_prompt

DERIV = json.dumps({"answer": "x**2*cos(x) + 2*x*sin(x)"})


def test_renamed_math_in_a_prompt_hits_and_the_answer_uses_the_new_names(
    cache: SubgoalCache,
) -> None:
    assert cache.admit_request("schema", "differentiate x**2*sin(x)", DERIV, "w1")
    hit = cache.lookup_request("schema", "differentiate y**2*sin(y)", workflow_id="w2")
    assert hit is not None
    assert json.loads(hit.value) == {"answer": "y**2*cos(y) + 2*y*sin(y)"}


def test_plain_text_prompts_key_on_normalised_text(cache: SubgoalCache) -> None:
    cache.admit_request("schema", "What is the capital of France?", '{"a": "Paris"}', "w1")
    assert cache.lookup_request("schema", "  what is the capital   of France?") is not None
    assert cache.lookup_request("schema", "What is the capital of Spain?") is None


def test_prose_with_hyphens_is_not_mistaken_for_math() -> None:
    a = canonical_prompt("s", "explain a well-known result")
    b = canonical_prompt("s", "explain a long-term result")
    assert a.key != b.key


def test_the_schema_key_separates_entries(cache: SubgoalCache) -> None:
    cache.admit_request("schema-a", "differentiate x**2*sin(x)", DERIV, "w1")
    assert cache.lookup_request("schema-b", "differentiate x**2*sin(x)") is None


def test_a_wrong_derivative_is_refused_at_admission(cache: SubgoalCache, bus: EventBus) -> None:
    wrong = json.dumps({"answer": "x**2*cos(x)"})
    assert not cache.admit_request("schema", "differentiate x**2*sin(x)", wrong, "w1")
    assert bus.history([EventType.CACHE_ADMIT])[-1].data.admitted is False


def test_a_custom_verifier_is_run_on_every_hit(cache: SubgoalCache) -> None:
    calls: list[str] = []

    def verifier(prompt: str, value_json: str) -> bool:
        calls.append(prompt)
        return "Paris" in value_json

    cache.admit_request("s", "capital of France?", '{"a": "Paris"}', "w1", verifier=verifier)
    cache.lookup_request("s", "capital of france?")
    assert calls == ["capital of France?", "capital of france?"]


def test_an_entry_whose_verifier_is_not_registered_here_is_a_miss(
    cache: SubgoalCache, home: Path, bus: EventBus
) -> None:
    cache.admit_request(
        "s", "capital of France?", '{"a": "Paris"}', "w1", verifier=lambda p, v: True
    )
    other = SubgoalCache(SQLiteStore(home / "cache.sqlite"), bus=bus)
    assert other.lookup_request("s", "capital of France?") is None
    assert bus.history([EventType.CACHE_MISS])[-1].data.reason == "verifier_unavailable"


def test_a_value_that_is_not_json_is_refused(cache: SubgoalCache) -> None:
    assert not cache.admit_request("s", "capital of France?", "Paris", "w1")


def test_an_unknown_verifier_name_is_a_typed_error(cache: SubgoalCache) -> None:
    with pytest.raises(CacheError):
        cache.admit_request("s", "q", "{}", "w1", verifier="nope")


def test_an_oversized_prompt_is_refused(cache: SubgoalCache) -> None:
    with pytest.raises(ExpressionTooLargeError):
        cache.lookup_request("s", "x" * 50_000)


def test_an_unparsable_formula_in_a_prompt_falls_back_to_text(cache: SubgoalCache) -> None:
    cache.admit_request("s", "simplify x**2 -* 1 please", '{"a": "?"}', "w1")
    assert cache.lookup_request("s", "simplify x**2 -* 1 please") is not None
    assert cache.lookup_request("s", "simplify y**2 -* 1 please") is None


def test_request_hit_ratio_is_counted_under_request(cache: SubgoalCache) -> None:
    cache.admit_request("s", "differentiate x**3", '{"answer": "3*x**2"}', "w1")
    cache.lookup_request("s", "differentiate t**3")
    cache.lookup_request("s", "differentiate t**4")
    assert cache.hit_ratio("request") == 0.5
