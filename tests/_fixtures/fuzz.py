"""Fuzzing: the hypothesis profiles and the strategies of every fuzzed surface.

The suite runs the ``ci`` profile: a fixed number of examples, derandomized (the same examples
every run, so CI never flakes on a new draw), no example database written into the checkout.
``benchmarks/bench_hardening.py`` draws fresh random examples in large counts from the same
strategies (profile ``bench``). ``COREASON_FUZZ_EXAMPLES`` scales the suite's counts.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "examples",
    "json_schemas",
    "json_values",
    "ledger_programs",
    "magic_lines",
    "not_schemas",
]

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "ci", database=None, deadline=None, derandomize=True, suppress_health_check=_QUIET
)
settings.register_profile("bench", database=None, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
    """``n`` examples, times ``COREASON_FUZZ_EXAMPLES / 100`` when that is set."""
    scale = os.environ.get("COREASON_FUZZ_EXAMPLES")
    return max(1, int(n * int(scale) / 100)) if scale else n


# --- JSON schemas ----------------------------------------------------------------------------

_texts = st.text(st.characters(codec="utf-8"), max_size=6)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=6,
)

_TYPES = ["string", "integer", "number", "boolean", "null", "object", "array", "nonsense"]
_PATTERNS = ["^a+$", "[", "(?=x)y", r"\d{2,}", "^(a|b)*c$", "\\", "[^\\x00]{0,3}", ".*", "\ud800"]
_FORMATS = ["date-time", "date", "email", "uuid", "ipv4", "uri", "bogus"]
_REFS = ["#", "#/$defs/a", "#/$defs/b", "#/nope", "#/properties/x", "http://elsewhere/s.json"]

_leaf: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(_TYPES) | st.lists(st.sampled_from(_TYPES), max_size=3)},
        optional={
            "minimum": st.integers(-5, 5) | st.floats(allow_nan=False),
            "maximum": st.integers(-5, 5),
            "exclusiveMinimum": st.integers(-5, 5),
            "multipleOf": st.sampled_from([0, -1, 0.5, 3]),
            "minLength": st.integers(-2, 40),
            "maxLength": st.integers(-2, 40),
            "pattern": st.sampled_from(_PATTERNS),
            "format": st.sampled_from(_FORMATS),
            "enum": st.lists(json_values, max_size=4),
            "const": json_values,
            "default": json_values,
        },
    ),
    st.fixed_dictionaries({"$ref": st.sampled_from(_REFS)}),
    st.fixed_dictionaries({"enum": st.lists(_texts | st.integers(), min_size=1, max_size=50)}),
)


def _compound(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(["a", "b", "x", "", "é", "a b", "\ud800"]) | _texts
    return st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(names, children, max_size=4),
            },
            optional={
                "required": st.lists(names, max_size=3),
                "additionalProperties": st.booleans() | children,
                "minProperties": st.integers(-1, 3),
                "patternProperties": st.dictionaries(
                    st.sampled_from(_PATTERNS), children, max_size=2
                ),
            },
        ),
        st.fixed_dictionaries(
            {"type": st.just("array"), "items": children},
            optional={
                "minItems": st.integers(-1, 4),
                "maxItems": st.integers(-1, 4),
                "prefixItems": st.lists(children, max_size=3),
                "uniqueItems": st.booleans(),
            },
        ),
        st.builds(
            lambda k, v: {k: v},
            st.sampled_from(["anyOf", "oneOf", "allOf"]),
            st.lists(children, max_size=3),
        ),
        st.builds(lambda v: {"not": v}, children),
        st.fixed_dictionaries(
            {
                "$defs": st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2),
                "$ref": st.sampled_from(_REFS),
            }
        ),
        st.fixed_dictionaries({"if": children, "then": children, "else": children}),
    )


def _nested(depth: int, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = (
            {"type": "array", "items": schema}
            if kind == "items"
            else {"type": "object", "properties": {"a": schema}, "required": ["a"]}
            if kind == "properties"
            else {kind: [schema]}
        )
    return schema


# Deep nesting found a RecursionError in schema validation (fixed: a depth bound).
_deep = st.builds(
    _nested, st.integers(1, 400), st.sampled_from(["items", "properties", "anyOf", "allOf"])
)
json_schemas: st.SearchStrategy[Any] = st.recursive(_leaf, _compound, max_leaves=10) | _deep
not_schemas: st.SearchStrategy[Any] = json_values.filter(lambda v: not isinstance(v, dict))


# --- magic lines -----------------------------------------------------------------------------

_VERBS = [
    "ask", "budget", "thunk", "invariant", "run", "check", "status", "dashboard", "pause",
    "resume", "abort", "preempt", "reset", "help", "version", "nope", "",
]  # fmt: skip
_OPTIONS = [
    "--into", "--workflow", "-w", "--tiers", "--max-tokens", "--seed", "--temperature", "--unit",
    "--of", "--steps", "--check", "--background", "--verify", "--ceiling", "--help", "-h", "--",
    "--max-tokens=3", "--seed=-1", "--nope",
]  # fmt: skip
_WORDS = st.one_of(
    st.sampled_from(_OPTIONS),
    st.sampled_from(
        ["wf-1", "Answer", "0", "-1", "-inf", "nan", "1e309", "3.5", "a.b", "{x}", "$x"]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),
    st.sampled_from(['"', "'", "\\", '"unterminated', "a'b", "=", "x=y"]),
)
magic_lines: st.SearchStrategy[str] = st.builds(
    lambda verb, words: " ".join([verb, *words]),
    st.sampled_from(_VERBS),
    st.lists(_WORDS, max_size=6),
)


# --- ledger programs -------------------------------------------------------------------------

# One request: prompt tokens, output chunks, and how it ends.
_request = st.tuples(
    st.integers(0, 30),
    st.lists(st.integers(1, 20), max_size=4),
    st.sampled_from(["settle", "error", "settle", "settle"]),
)
_thread = st.lists(_request, min_size=1, max_size=4)
# A process: its threads, and whether (and after how many requests) it is killed with -9.
_process = st.tuples(st.lists(_thread, min_size=1, max_size=2), st.none() | st.integers(0, 3))
ledger_programs = st.fixed_dictionaries(
    {
        "ceiling": st.integers(50, 2000),
        "max_out": st.integers(1, 40),
        "processes": st.lists(_process, min_size=1, max_size=3),
    }
)
