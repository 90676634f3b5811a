"""Lazy fields: a schema field marked ``lazy`` may hold a ``⟦name(args)⟧`` placeholder.

``Field(json_schema_extra={"lazy": True})`` on a string field lets the local grammar accept a
placeholder there instead of a value (the model defers the computation). A placeholder a
verifier reads is forced before the verdict — by the field's own repair path: re-decoded in
the session under the field's real grammar, else computed by a tool tier — and its expansion
is spliced into the KV. One no verifier reads stays a thunk in ``Result.thunks`` until a
consumer forces it (``rt.router.force``); an unforced step is never paid for.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from coreason_runtime.verify._json import get_pointer, locate

if TYPE_CHECKING:
    from coreason_runtime.tensor._schema import SchemaSpec

__all__ = [
    "PLACEHOLDER",
    "PLACEHOLDER_PATTERN",
    "grammar_spec",
    "lazy_pointers",
    "pending_thunks",
    "with_placeholders",
]

PLACEHOLDER_PATTERN = r"^⟦[A-Za-z_][A-Za-z0-9_]{0,31}\([^⟦⟧]{0,80}\)⟧$"
PLACEHOLDER = re.compile(r"⟦([A-Za-z_][A-Za-z0-9_]*)\(([^⟦⟧]*)\)⟧")


def _properties(node: Any, schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target
    props = node.get("properties") if isinstance(node, dict) else None
    return props if isinstance(props, dict) else {}


def lazy_pointers(schema: dict[str, Any], node: Any = None, base: str = "") -> list[str]:
    """JSON pointers of the fields marked ``"lazy": true`` (objects nested in objects too)."""
    node = schema if node is None else node
    out: list[str] = []
    for name, sub in _properties(node, schema).items():
        pointer = f"{base}/{name.replace('~', '~0').replace('/', '~1')}"
        if isinstance(sub, dict) and sub.get("lazy") is True:
            out.append(pointer)
        else:
            out += lazy_pointers(schema, sub, pointer)
    return out


def _allow(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` or a placeholder (the lazy marker stays, so the model sees it)."""
    real = {k: v for k, v in node.items() if k not in ("title", "description", "lazy")}
    keep: dict[str, Any] = {k: node[k] for k in ("title", "description", "lazy") if k in node}
    alternative = {"type": "string", "pattern": PLACEHOLDER_PATTERN}
    return {**keep, "anyOf": [real, alternative]}


def with_placeholders(schema: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``schema`` whose lazy fields also accept a placeholder; None if none is lazy."""
    if not lazy_pointers(schema):
        return None
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        for name, sub in list(_properties(node, out).items()):
            if isinstance(sub, dict) and sub.get("lazy") is True:
                _properties(node, out)[name] = _allow(sub)
            else:
                walk(sub)

    walk(out)
    return out


def grammar_spec(spec: SchemaSpec) -> SchemaSpec:
    """The spec a steerable tier decodes under: lazy fields accept a placeholder too (the
    same model validates the answer, so a lazy field must accept a placeholder string)."""
    lazy = with_placeholders(spec.json_schema)
    if lazy is None:
        return spec
    return replace(spec, json_schema=lazy, key=f"{spec.key}:lazy")


def pending_thunks(text: str, pointers: list[str]) -> dict[str, tuple[str, str]]:
    """Lazy fields of the JSON ``text`` holding a placeholder: pointer -> (name, args)."""
    try:
        value, _ = locate(text)
    except ValueError:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for pointer in pointers:
        try:
            held = get_pointer(value, pointer)
        except LookupError:
            continue
        m = PLACEHOLDER.fullmatch(held) if isinstance(held, str) else None
        if m is not None:
            out[pointer] = (m.group(1), m.group(2))
    return out
