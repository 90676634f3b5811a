"""Relaxing a schema the grammar engine refuses: compile what it can, validate the rest after.

llguidance refuses some keywords outright (``oneOf``, ``not``, ``if``/``then``,
``dependencies``, ``uniqueItems``, unknown ``format`` names, ...). Rather than skipping the
local tier, :func:`relax` reads the refusal, removes or weakens exactly what it names, and
tries again: every step only *widens* the set of values the grammar allows (``oneOf`` becomes
``anyOf``, a dropped assertion no longer constrains), so every value of the original schema
still fits the relaxed grammar, and the validation that runs after decoding, always against
the original schema, enforces what was dropped (the same residue idea as the OpenAI strict
form). Each step is named (``"oneOf->anyOf"``, ``"not"``, ``"format:uri-reference"``, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["RELAXATIONS", "relax"]

Schema = dict[str, Any]
T = TypeVar("T")

# Where subschemas live: maps of name -> schema, single schemas, lists of schemas.
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SINGLE = (
    "items",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "additionalProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")


def _walk(node: Any, fn: Callable[[Schema], Schema]) -> Any:
    """``node`` with ``fn`` applied to every (sub)schema object, bottom-up; a copy."""
    if not isinstance(node, dict):
        return node
    out: Schema = dict(node)
    for key in _MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _walk(sub, fn) for name, sub in out[key].items()}
    for key in _SINGLE:
        if isinstance(out.get(key), dict):
            out[key] = _walk(out[key], fn)
    for key in _LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_walk(sub, fn) for sub in out[key]]
    if isinstance(out.get("dependencies"), dict):
        out["dependencies"] = {
            k: _walk(v, fn) if isinstance(v, dict) else v for k, v in out["dependencies"].items()
        }
    return fn(out)


def _drop(*keys: str) -> Callable[[Schema], Schema]:
    def fn(s: Schema) -> Schema:
        return {k: v for k, v in s.items() if k not in keys}

    return fn


def _one_of_to_any_of(s: Schema) -> Schema:
    if "oneOf" not in s:
        return s
    out = {k: v for k, v in s.items() if k != "oneOf"}
    any_of = out.pop("anyOf", None)
    if any_of is None:
        out["anyOf"] = s["oneOf"]
    else:  # both: each must hold
        out["allOf"] = [*out.get("allOf", []), {"anyOf": any_of}, {"anyOf": s["oneOf"]}]
    return out


def _drop_format(name: str) -> Callable[[Schema], Schema]:
    def fn(s: Schema) -> Schema:
        return {k: v for k, v in s.items() if not (k == "format" and v == name)}

    return fn


def _ref_alone(s: Schema) -> Schema:
    """``{"$ref": X, ...}`` means X *and* the siblings: X alone allows more."""
    if "$ref" not in s:
        return s
    keep = ("$ref", "$defs", "definitions", "$id", "$schema", "title", "description")
    return {k: v for k, v in s.items() if k in keep}


def _ref_to_any(target: str) -> Callable[[Schema], Schema]:
    """A ``$ref`` to ``target`` (a recursion the engine cannot follow) allows any value."""

    def fn(s: Schema) -> Schema:
        return {} if s.get("$ref") in (target, f"{target}/") else s

    return fn


def _drop_pattern(regex: str) -> Callable[[Schema], Schema]:
    def fn(s: Schema) -> Schema:
        return {k: v for k, v in s.items() if not (k == "pattern" and v == regex)}

    return fn


def _keys(message: str) -> list[str]:
    found = re.search(r"Unimplemented keys: (\[[^\]]*\])", message)
    if found is None:
        return []
    try:
        keys = json.loads(found.group(1))
    except json.JSONDecodeError:
        return []
    return [k for k in keys if isinstance(k, str)]


Step = tuple[str, Callable[[Schema], Schema]]


def _by_message(message: str) -> list[Step]:
    """The relaxations a refusal names; [] when it names none."""
    if "oneOf constraints are not supported" in message:
        return [("oneOf->anyOf", _one_of_to_any_of)]
    fmt = re.search(r"Unknown format: (\S+)", message)
    if fmt is not None:
        return [(f"format:{fmt.group(1)}", _drop_format(fmt.group(1)))]
    keys = _keys(message)
    if keys:
        steps: list[Step] = [(k, _drop(k)) for k in keys]
        if "if" in keys:  # then/else without if mean nothing: drop them with it
            steps.append(("then/else", _drop("then", "else")))
        return steps
    if "min/maxProperties" in message:
        return [("minProperties/maxProperties", _drop("minProperties", "maxProperties"))]
    if "sibling keys" in message:
        steps = [("$ref siblings", _ref_alone)]
        target = re.search(r"(#[^\s]*)\s*$", message)
        if target is not None:
            steps.append((f"$ref:{target.group(1)}", _ref_to_any(target.group(1))))
        return steps
    regex = re.search(r"in regex /(.*)/\s+while processing", message, re.DOTALL)
    if regex is not None:
        return [(f"pattern:{regex.group(1)}", _drop_pattern(regex.group(1)))]
    return []


# Tried in order when a refusal names nothing recognisable (or naming did not help): each
# widens more than the last; the final one keeps only the top-level type.
RELAXATIONS: list[Step] = [
    ("allOf", _drop("allOf")),
    ("not/if/then/else", _drop("not", "if", "then", "else")),
    ("dependencies", _drop("dependencies", "dependentSchemas", "dependentRequired")),
    ("uniqueItems/contains", _drop("uniqueItems", "contains", "minContains", "maxContains")),
    ("format", _drop("format")),
    ("pattern", _drop("pattern")),
    ("oneOf->anyOf", _one_of_to_any_of),
]


def _top_type(schema: Schema) -> Schema:
    kind = schema.get("type")
    return {"type": kind} if isinstance(kind, (str, list)) else {}


def _candidates(message: str) -> list[Step]:
    return [*_by_message(message), *RELAXATIONS]


def relax(
    schema: Schema, compile_: Callable[[Schema], T], is_refusal: Callable[[Exception], bool]
) -> tuple[T, Schema, list[str]]:
    """The result of ``compile_`` on the least relaxed schema it accepts.

    ``compile_`` raises on refusal; ``is_refusal`` says whether an error is one a relaxation
    may get past (an unsatisfiable schema is not: dropping keywords cannot make an answer
    valid). The relaxations the refusal names are tried first, then the generic ladder
    (:data:`RELAXATIONS`); one is kept only when it gets past the refusal (the schema compiles,
    or the engine refuses something else), and the last resort keeps only the top-level type.
    Returns ``(compiled, relaxed schema, names of the relaxations kept)``.
    """
    tried: set[str] = set()
    steps: list[str] = []
    current = schema
    try:
        return compile_(current), current, steps
    except Exception as e:
        if not is_refusal(e):
            raise
        refusal = str(e)
    while True:
        progressed = False
        for name, fn in _candidates(refusal):
            if name in tried:
                continue
            tried.add(name)
            candidate = _walk(current, fn)
            if candidate == current:
                continue
            try:
                return compile_(candidate), candidate, [*steps, name]
            except Exception as e:
                if not is_refusal(e):
                    raise
                if str(e) == refusal:
                    continue  # it did not help: leave it out
                current, refusal, progressed = candidate, str(e), True
                steps.append(name)
                break
        if not progressed:
            last = _top_type(schema)
            return compile_(last), last, [*steps, "everything"]
