"""JSON with positions: where each field's value sits in the text, JSON pointers, subschemas."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

__all__ = ["get_pointer", "has_pointer", "locate", "pointer_parts", "subschema"]

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WS = " \t\n\r"
_LITERALS = {"true": True, "false": False, "null": None}


def pointer_parts(pointer: str) -> list[str]:
    """The unescaped reference tokens of a JSON pointer (``"/a/0"`` -> ``["a", "0"]``)."""
    if pointer == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _child(pointer: str, key: str | int) -> str:
    return f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"


def locate(text: str) -> tuple[Any, dict[str, tuple[int, int]]]:
    """Parse JSON ``text``; the value and, per JSON pointer, the ``[start, end)`` characters of
    that value in ``text`` (``""`` is the whole value, surrounding blanks excluded).

    Raises
    ------
    ValueError
        ``text`` is not one JSON value.
    """
    spans: dict[str, tuple[int, int]] = {}
    pos = _skip(text, 0)
    value, end = _value(text, pos, "", spans)
    if _skip(text, end) != len(text):
        msg = f"extra data after the JSON value at character {end}"
        raise ValueError(msg)
    return value, spans


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _value(text: str, pos: int, pointer: str, spans: dict[str, tuple[int, int]]) -> tuple[Any, int]:
    value: Any
    if pos >= len(text):
        msg = "unexpected end of JSON"
        raise ValueError(msg)
    ch = text[pos]
    if ch == "{":
        value, end = _object(text, pos, pointer, spans)
    elif ch == "[":
        value, end = _array(text, pos, pointer, spans)
    elif ch == '"':
        value, end = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
    else:
        value, end = _scalar(text, pos)
    spans[pointer] = (pos, end)
    return value, end


def _scalar(text: str, pos: int) -> tuple[Any, int]:
    for word, literal in _LITERALS.items():
        if text.startswith(word, pos):
            return literal, pos + len(word)
    m = _NUMBER.match(text, pos)
    if not m:
        msg = f"not a JSON value at character {pos}"
        raise ValueError(msg)
    number = m.group()
    return (float(number) if any(c in number for c in ".eE") else int(number)), m.end()


def _object(
    text: str, pos: int, pointer: str, spans: dict[str, tuple[int, int]]
) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    pos = _skip(text, pos + 1)
    if pos < len(text) and text[pos] == "}":
        return out, pos + 1
    while True:
        if pos >= len(text) or text[pos] != '"':
            msg = f"expected a key at character {pos}"
            raise ValueError(msg)
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        pos = _skip(text, pos)
        if pos >= len(text) or text[pos] != ":":
            msg = f"expected ':' at character {pos}"
            raise ValueError(msg)
        out[key], pos = _value(text, _skip(text, pos + 1), _child(pointer, key), spans)
        pos = _skip(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "}":
            return out, pos + 1
        msg = f"expected ',' or '}}' at character {pos}"
        raise ValueError(msg)


def _array(
    text: str, pos: int, pointer: str, spans: dict[str, tuple[int, int]]
) -> tuple[list[Any], int]:
    out: list[Any] = []
    pos = _skip(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return out, pos + 1
    while True:
        item, pos = _value(text, pos, _child(pointer, len(out)), spans)
        out.append(item)
        pos = _skip(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return out, pos + 1
        msg = f"expected ',' or ']' at character {pos}"
        raise ValueError(msg)


def has_pointer(value: Any, pointer: str) -> bool:
    """Whether ``pointer`` names something inside ``value``."""
    try:
        get_pointer(value, pointer)
    except LookupError:
        return False
    return True


def get_pointer(value: Any, pointer: str) -> Any:
    """The part of ``value`` at ``pointer``.

    Raises
    ------
    LookupError
        Nothing is there.
    """
    node = value
    for part in pointer_parts(pointer):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            msg = f"no field {pointer!r}"
            raise LookupError(msg)
    return node


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """Follow local ``$ref``s (``#/$defs/X``) until a schema without one."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
        ref = node["$ref"]
        if not ref.startswith("#"):
            return None
        target: Any = root
        for part in pointer_parts(ref[1:]):
            if not isinstance(target, dict) or part not in target:
                return None
            target = target[part]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **extra} if extra and isinstance(target, dict) else target
        seen += 1
    return node


def subschema(schema: dict[str, Any], pointer: str) -> dict[str, Any] | None:
    """The schema the value at ``pointer`` must satisfy, standalone (the root's ``$defs`` kept),
    or ``None`` when it cannot be told without the value (the path goes through an ``anyOf``).
    """
    node: Any = _resolve(schema, schema)
    for part in pointer_parts(pointer):
        if not isinstance(node, dict):
            return None
        if isinstance(node.get("properties"), dict) and part in node["properties"]:
            node = node["properties"][part]
        elif part.isdigit() and isinstance(node.get("prefixItems"), list):
            items = node["prefixItems"]
            node = items[int(part)] if int(part) < len(items) else node.get("items")
        elif part.isdigit() and isinstance(node.get("items"), dict):
            node = node["items"]
        else:
            return None
        node = _resolve(node, schema)
    if not isinstance(node, dict):
        return None
    out = copy.deepcopy(node)
    for defs in ("$defs", "definitions"):
        if defs in schema and "$ref" in json.dumps(out):
            out[defs] = copy.deepcopy(schema[defs])
    return out
