"""JSON with positions, pointers and subschemas."""

from __future__ import annotations

import pytest
from coreason_runtime.verify._json import get_pointer, locate, subschema
from pydantic import BaseModel


def test_every_value_is_located_by_its_pointer() -> None:
    text = '{"a": 1, "b": {"c": ["x", true]}, "d~/e": null}'
    value, spans = locate(text)
    assert value == {"a": 1, "b": {"c": ["x", True]}, "d~/e": None}
    assert {p: text[s:e] for p, (s, e) in spans.items()} == {
        "": text,
        "/a": "1",
        "/b": '{"c": ["x", true]}',
        "/b/c": '["x", true]',
        "/b/c/0": '"x"',
        "/b/c/1": "true",
        "/d~0~1e": "null",
    }
    assert get_pointer(value, "/b/c/1") is True


@pytest.mark.parametrize("bad", ['{"a": 1', '{"a" 1}', "[1,]", '{"a": 1} x'])
def test_broken_json_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        locate(bad)


def test_a_subschema_keeps_the_definitions_it_refers_to() -> None:
    class Inner(BaseModel):
        v: int

    class Outer(BaseModel):
        inner: Inner
        items: list[Inner]
        name: str

    schema = Outer.model_json_schema()
    assert subschema(schema, "/name") == {"title": "Name", "type": "string"}
    inner = subschema(schema, "/inner")
    assert inner is not None and inner["properties"]["v"]["type"] == "integer"
    item = subschema(schema, "/items/0/v")
    assert item == {"title": "V", "type": "integer"}
    assert subschema(schema, "/missing") is None
