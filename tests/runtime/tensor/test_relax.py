"""Wider coverage: a schema the grammar engine refuses compiles relaxed, validated after."""

from __future__ import annotations

import json
from typing import Any

import pytest
from coreason_runtime import EventBus, EventType, SchemaCompileError, ValidationFailure
from coreason_runtime.events import SchemaCompiled
from coreason_runtime.tensor._compiler import LocalGrammar, UniversalCompiler
from coreason_runtime.tensor._relax import relax


@pytest.fixture(scope="module")
def compiler(model_tokenizer: Any) -> UniversalCompiler:
    return UniversalCompiler(model_tokenizer, timeout=30.0, strict=False)


def _accepts(compiler: UniversalCompiler, grammar: LocalGrammar, value: Any) -> bool:
    assert compiler.info is not None
    matcher = grammar.matcher(compiler.info)
    ids = compiler.info.ll.tokenize_str(json.dumps(value))
    return bool(matcher.consume_tokens(ids) and matcher.is_accepting())


ONE_OF = {
    "type": "object",
    "properties": {"n": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}},
    "required": ["n"],
}
NOT = {
    "type": "object",
    "properties": {"n": {"type": "integer", "not": {"const": 3}}},
    "required": ["n"],
}
UNIQUE = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
IF_THEN = {
    "type": "object",
    "properties": {"kind": {"type": "string"}, "size": {"type": "integer"}},
    "if": {"properties": {"kind": {"const": "big"}}},
    "then": {"properties": {"size": {"minimum": 10}}},
}


@pytest.mark.parametrize(
    ("schema", "relaxed", "caught"),
    [
        (ONE_OF, ("oneOf->anyOf",), {"n": 2}),  # both branches hold: oneOf fails
        (NOT, ("not",), {"n": 3}),
        (UNIQUE, ("uniqueItems",), [1, 1]),
        (IF_THEN, ("if",), {"kind": "big", "size": 2}),
    ],
)
def test_a_refused_keyword_is_relaxed_and_enforced_by_validation(
    compiler: UniversalCompiler, schema: dict[str, Any], relaxed: tuple[str, ...], caught: Any
) -> None:
    compiled = compiler.compile(schema)
    assert compiled.grammar is not None
    assert "grammar" not in compiled.errors
    assert set(relaxed) <= set(compiled.relaxed)
    assert _accepts(compiler, compiled.grammar, caught)  # the grammar lets it through ...
    with pytest.raises(ValidationFailure):
        compiled.validate_text(json.dumps(caught))  # ... validation does not


def test_a_relaxed_grammar_still_accepts_every_valid_value(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(NOT)
    assert _accepts(compiler, compiled.grammar, {"n": 4})
    assert not _accepts(compiler, compiled.grammar, {"n": "four"})  # the rest is still masked


def test_an_unsatisfiable_schema_is_not_relaxed(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile({"type": "integer", "minimum": 5, "maximum": 1})
    assert isinstance(compiled.errors["grammar"], SchemaCompileError)
    assert compiled.relaxed == ()


def test_a_property_named_like_a_keyword_is_kept(compiler: UniversalCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {"not": {"type": "integer"}, "b": {"not": {"const": 1}}},
        "required": ["not"],
    }
    compiled = compiler.compile(schema)
    assert compiled.relaxed == ("not",)
    assert not _accepts(compiler, compiled.grammar, {"b": 2})  # "not" is still required


def test_only_relaxations_that_help_are_kept() -> None:
    calls: list[dict[str, Any]] = []

    def compile_(schema: dict[str, Any]) -> str:
        calls.append(schema)
        if "allOf" in json.dumps(schema):
            msg = "Schema intersection stack level exceeded"
            raise SchemaCompileError(msg)
        return "ok"

    schema = {"type": "object", "format": "x", "allOf": [{"type": "object"}]}
    result, relaxed, steps = relax(schema, compile_, lambda e: isinstance(e, SchemaCompileError))
    assert result == "ok"
    assert steps == ["allOf"]
    assert relaxed == {"type": "object", "format": "x"}


def test_the_last_resort_keeps_only_the_top_level_type() -> None:
    def compile_(schema: dict[str, Any]) -> str:
        if schema != {"type": "object"}:
            msg = "something the ladder cannot fix"
            raise SchemaCompileError(msg)
        return "ok"

    _, relaxed, steps = relax({"type": "object", "minProperties": 1}, compile_, lambda e: True)
    assert relaxed == {"type": "object"}
    assert steps == ["everything"]


def test_the_compile_event_names_the_relaxations(model_tokenizer: Any) -> None:
    bus = EventBus()
    UniversalCompiler(model_tokenizer, bus=bus).compile(UNIQUE)
    (event,) = bus.history([EventType.SCHEMA_COMPILED])
    assert isinstance(event.data, SchemaCompiled)
    assert event.data.relaxed == ["uniqueItems"]
