"""Fuzzed schemas into the UniversalCompiler: a grammar, or a typed SchemaError; never a crash."""

from __future__ import annotations

from typing import Any

import pytest
from coreason_runtime import SchemaError
from coreason_runtime.tensor import CompiledSchema, UniversalCompiler
from hypothesis import given, settings

from tests._fixtures.fuzz import examples, json_schemas, not_schemas


@pytest.fixture(scope="module")
def compiler(model_tokenizer: Any) -> UniversalCompiler:
    return UniversalCompiler(model_tokenizer, timeout=2.0)


def compile_or_refuse(compiler: UniversalCompiler, schema: Any) -> CompiledSchema | None:
    """The property: a compiled schema whose missing forms carry typed errors, or a
    SchemaError; any other exception fails the test."""
    try:
        compiled = compiler.compile(schema)
    except SchemaError:
        return None
    assert isinstance(compiled, CompiledSchema)
    if compiled.grammar is None:
        assert isinstance(compiled.errors["grammar"], SchemaError)
        assert "<state>" not in compiled.errors["grammar"].message
    else:
        matcher = compiled.grammar.matcher(compiler.info)
        assert not matcher.is_error()
    return compiled


@settings(max_examples=examples(60))
@given(schema=json_schemas)
def test_any_schema_compiles_or_is_a_typed_schema_error(
    compiler: UniversalCompiler, schema: Any
) -> None:
    compile_or_refuse(compiler, schema)


@settings(max_examples=examples(20))
@given(value=not_schemas)
def test_a_value_that_is_not_a_schema_is_a_schema_error(
    compiler: UniversalCompiler, value: Any
) -> None:
    with pytest.raises(SchemaError):
        compiler.compile(value)


@pytest.mark.parametrize("depth", [100, 1000])
def test_a_schema_nested_too_deeply_is_a_schema_error_not_a_recursion_error(
    compiler: UniversalCompiler, depth: int
) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="nests deeper"):
        compiler.compile(schema)
