"""UniversalCompiler: grammar, strict OpenAI form, regex; typed errors; cache and timeout."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
from coreason_runtime import (
    EventBus,
    EventType,
    OracleSchemaLimitError,
    SchemaCompileError,
    SchemaCompileTimeout,
    SchemaError,
)
from coreason_runtime.tensor._compiler import LocalGrammar, UniversalCompiler, clear_cache
from coreason_runtime.tensor._openai_strict import OpenAILimits, denullify
from coreason_runtime.tensor._schema import SchemaSpec
from pydantic import BaseModel, Field


class Point(BaseModel):
    x: int
    y: int
    label: str


class Derivative(BaseModel):
    expression: str = Field(min_length=1, max_length=30)
    derivative: str
    order: int = Field(default=1, ge=1)
    note: str | None = None


@pytest.fixture(scope="module")
def compiler(model_tokenizer: Any) -> UniversalCompiler:
    return UniversalCompiler(model_tokenizer, timeout=30.0)


def _accepts(compiler: UniversalCompiler, grammar: LocalGrammar, text: str) -> bool:
    """Does the grammar accept ``text`` token by token, and end there?"""
    assert compiler.info is not None
    matcher = grammar.matcher(compiler.info)
    ids = compiler.info.ll.tokenize_str(text)
    return matcher.consume_tokens(ids) and matcher.is_accepting()


def test_pydantic_model_compiles_every_form(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Point)
    assert isinstance(compiled.grammar, LocalGrammar)
    assert compiled.openai is not None
    assert compiled.regex is not None
    assert compiled.errors == {}


def test_grammar_accepts_a_valid_instance(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Point)
    assert _accepts(compiler, compiled.grammar, '{"x": 1, "y": -2, "label": "a"}')


def test_grammar_rejects_a_wrong_type(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Point)
    assert not _accepts(compiler, compiled.grammar, '{"x": "one", "y": 2, "label": "a"}')


def test_grammar_enforces_max_length(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Derivative)
    long = json.dumps({"expression": "x" * 31, "derivative": "1"})
    assert not _accepts(compiler, compiled.grammar, long)


def test_pydantic_grammar_forbids_unknown_keys(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Point)
    assert not _accepts(compiler, compiled.grammar, '{"x": 1, "y": 2, "label": "a", "z": 3}')


def test_raw_schema_is_closed_for_generation_by_default(compiler: UniversalCompiler) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    compiled = compiler.compile(schema)
    assert _accepts(compiler, compiled.grammar, '{"a": 1}')
    assert not _accepts(compiler, compiled.grammar, '{"a": 1, "b": true}')


def test_faithful_compiler_keeps_additional_properties_open(
    compiler: UniversalCompiler,
) -> None:
    faithful = UniversalCompiler(compiler.info, strict=False)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    compiled = faithful.compile(schema)
    assert _accepts(faithful, compiled.grammar, '{"a": 1, "b": true}')


def test_composed_schema_is_left_open(compiler: UniversalCompiler) -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"type": "object", "properties": {"b": {"type": "integer"}}},
        ]
    }
    compiled = compiler.compile(schema)
    assert _accepts(compiler, compiled.grammar, '{"a": 1, "b": 2}')


def test_regex_matches_the_grammar_layout(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Point)
    assert compiled.regex is not None
    assert re.fullmatch(compiled.regex, '{"x": 1, "y": -2, "label": "a \\"b\\""}')
    assert not re.fullmatch(compiled.regex, '{"x": 1.5, "y": -2, "label": "a"}')


def test_no_regex_for_optional_fields(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Derivative)
    assert compiled.regex is None
    assert isinstance(compiled.errors["regex"], SchemaCompileError)


def test_unsatisfiable_schema_is_a_compile_error(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile({"type": "integer", "minimum": 5, "maximum": 1})
    assert compiled.grammar is None
    assert isinstance(compiled.errors["grammar"], SchemaCompileError)


def test_incompatible_all_of_is_a_compile_error(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile({"allOf": [{"type": "string"}, {"type": "integer"}]})
    assert isinstance(compiled.errors["grammar"], SchemaCompileError)


def test_unknown_format_is_dropped_from_the_grammar(compiler: UniversalCompiler) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "no-such"}}}
    compiled = compiler.compile(schema)
    assert compiled.grammar is not None
    assert compiled.relaxed == ("format:no-such",)


def test_unknown_format_is_a_compile_error_without_relaxing(model_tokenizer: Any) -> None:
    compiler = UniversalCompiler(model_tokenizer, relax=False)
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "no-such"}}}
    assert isinstance(compiler.compile(schema).errors["grammar"], SchemaCompileError)


def test_invalid_json_schema_raises_schema_error(compiler: UniversalCompiler) -> None:
    with pytest.raises(SchemaError):
        compiler.compile({"type": "integer", "minimum": "five"})


def test_non_pydantic_type_raises_schema_error(compiler: UniversalCompiler) -> None:
    with pytest.raises(SchemaError):
        compiler.compile(int)


def test_compile_is_cached_by_schema_and_tokenizer(compiler: UniversalCompiler) -> None:
    first = compiler.compile(Point).grammar
    assert compiler.compile(Point).grammar is first


def test_compile_timeout_skips_and_late_result_fills_cache(
    model_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coreason_runtime.tensor._compiler as compiler_module

    clear_cache()
    release = threading.Event()
    real = compiler_module.compile_grammar

    def slow_compile(*args: Any, **kwargs: Any) -> Any:  # cannot finish before it is released
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiler_module, "compile_grammar", slow_compile)
    props = {f"f{i}": {"type": "string", "pattern": f"^[a-z]{{{i + 1}}}[0-9]+$"} for i in range(40)}
    schema = {"type": "object", "properties": props, "required": list(props)}
    fast = UniversalCompiler(model_tokenizer, timeout=0.0)
    compiled = fast.compile(schema)
    assert compiled.grammar is None
    assert isinstance(compiled.errors["grammar"], SchemaCompileTimeout)
    release.set()
    patient = UniversalCompiler(model_tokenizer, timeout=60.0)
    assert isinstance(patient.compile(schema).grammar, LocalGrammar)
    assert isinstance(fast.compile(schema).grammar, LocalGrammar)  # now from the cache


def test_compile_without_tokenizer_still_checks_the_grammar() -> None:
    compiler = UniversalCompiler(None)
    assert compiler.compile(Point).grammar is not None
    bad = compiler.compile({"type": "integer", "minimum": 5, "maximum": 1})
    assert isinstance(bad.errors["grammar"], SchemaCompileError)


def test_compile_publishes_an_event(model_tokenizer: Any) -> None:
    bus = EventBus()
    UniversalCompiler(model_tokenizer, bus=bus).compile(Point)
    events = bus.history([EventType.SCHEMA_COMPILED])
    assert events and events[-1].data.forms == ["grammar", "openai", "regex"]


def test_openai_form_makes_optional_fields_nullable_and_required(
    compiler: UniversalCompiler,
) -> None:
    compiled = compiler.compile(Derivative)
    assert compiled.openai is not None
    body = compiled.openai["json_schema"]
    schema = body["schema"]
    assert body["strict"] is True
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"expression", "derivative", "order", "note"}
    assert schema["properties"]["order"]["type"] == ["integer", "null"]


def test_openai_form_moves_unsupported_keywords_to_residue(compiler: UniversalCompiler) -> None:
    compiled = compiler.compile(Derivative)
    assert compiled.openai is not None
    expression = compiled.openai["json_schema"]["schema"]["properties"]["expression"]
    assert "maxLength" not in expression
    assert compiled.residue["#/properties/expression"]["maxLength"] == 30


def test_openai_property_limit_is_checked(compiler: UniversalCompiler) -> None:
    props = {f"p{i}": {"type": "integer"} for i in range(101)}
    compiled = compiler.compile({"type": "object", "properties": props})
    assert compiled.openai is None
    assert isinstance(compiled.errors["openai"], OracleSchemaLimitError)
    assert compiled.grammar is not None  # the local tier can still take it


def test_openai_nesting_limit_is_checked(model_tokenizer: Any) -> None:
    inner: dict[str, Any] = {"type": "integer"}
    for _ in range(3):
        inner = {"type": "object", "properties": {"a": inner}, "required": ["a"]}
    strict = UniversalCompiler(model_tokenizer, openai_limits=OpenAILimits(max_depth=2))
    compiled = strict.compile(inner)
    assert isinstance(compiled.errors["openai"], OracleSchemaLimitError)


def test_openai_rejects_maps(compiler: UniversalCompiler) -> None:
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert isinstance(compiler.compile(schema).errors["openai"], OracleSchemaLimitError)


def test_denullify_lets_strict_answers_validate(compiler: UniversalCompiler) -> None:
    spec = SchemaSpec.from_user(Derivative)
    answer = {"expression": "x**2", "derivative": "2*x", "order": None, "note": None}
    value = denullify(answer, spec.json_schema)
    assert spec.validate_value(value) == Derivative(expression="x**2", derivative="2*x")


def test_model_and_its_tokenizer_share_compiled_grammars(
    tiny_model: Any, model_tokenizer: Any
) -> None:
    by_model = UniversalCompiler(tiny_model).compile(Point).grammar
    assert UniversalCompiler(model_tokenizer).compile(Point).grammar is by_model


POINT = {"x": 1, "y": 2, "label": "a"}


def test_free_whitespace_only_when_pretty_output_is_asked_for(
    compiler: UniversalCompiler,
) -> None:
    compact = compiler.compile(SchemaSpec.from_user(Point))
    pretty = compiler.compile(SchemaSpec.from_user(Point, pretty=True))
    indented = json.dumps(POINT, indent=2)
    assert _accepts(compiler, compact.grammar, json.dumps(POINT))
    assert not _accepts(compiler, compact.grammar, indented)
    assert _accepts(compiler, pretty.grammar, indented)
    assert _accepts(compiler, pretty.grammar, json.dumps(POINT, separators=(",", ":")))


def test_pretty_whitespace_is_bounded(compiler: UniversalCompiler) -> None:
    pretty = compiler.compile(SchemaSpec.from_user(Point, pretty=True))
    padded = '{"x": 1,' + "\n" + " " * 40 + '"y": 2, "label": "a"}'
    assert not _accepts(compiler, pretty.grammar, padded)


def test_a_schema_cannot_switch_free_whitespace_on_by_itself(compiler: UniversalCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "x-guidance": {"whitespace_flexible": True},
    }
    compiled = compiler.compile(schema)
    assert not _accepts(compiler, compiled.grammar, '{"a":         1}')
