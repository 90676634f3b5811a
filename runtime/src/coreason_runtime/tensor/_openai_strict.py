"""A JSON schema rewritten for OpenAI strict mode, plus a regex form for SGLang-style servers."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from coreason_runtime._exceptions import OracleSchemaLimitError, SchemaCompileError

__all__ = ["OpenAILimits", "denullify", "to_openai_strict", "to_regex"]


@dataclass(frozen=True)
class OpenAILimits:
    """OpenAI strict-mode limits, checked before any spend.

    Defaults are the long-standing documented limits (100 object properties in total,
    5 levels of nesting, 500 enum values, 15,000 characters of names/enum/const strings;
    7,500 characters for one string enum of more than 250 values). Newer OpenAI models accept
    more; raise them here for such a server.
    """

    max_properties: int = 100
    max_depth: int = 5
    max_enum_values: int = 500
    max_total_chars: int = 15_000
    max_large_enum_chars: int = 7_500


# Keywords strict mode does not accept, per type; they are moved to the residue and enforced
# by the validation that follows every remote answer (conservative: some newer models accept
# a few of them).
_UNSUPPORTED = frozenset(
    {
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "minItems",
        "maxItems",
        "uniqueItems",
        "default",
        "examples",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contentEncoding",
        "contentMediaType",
        "readOnly",
        "writeOnly",
        "deprecated",
        "$comment",
        "prefixItems",
        "additionalItems",
    }
)
_KEEP = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "$defs",
        "definitions",
        "description",
        "title",
    }
)
_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")


class _Walker:
    def __init__(self, limits: OpenAILimits) -> None:
        self.limits = limits
        self.residue: dict[str, Any] = {}
        self.properties = 0
        self.enum_values = 0
        self.chars = 0
        self.nullable: list[str] = []

    def fail(self, path: str, why: str) -> OracleSchemaLimitError:
        msg = f"OpenAI strict mode cannot take this schema at {path}: {why}"
        return OracleSchemaLimitError(msg)

    def node(self, s: Any, path: str, depth: int) -> dict[str, Any]:
        if s is True or s == {}:
            raise self.fail(path, "an unconstrained schema ({} or true) is not supported")
        if not isinstance(s, dict):
            raise self.fail(path, f"expected a schema object, got {type(s).__name__}")
        out: dict[str, Any] = {}
        moved = {k: v for k, v in s.items() if k in _UNSUPPORTED}
        if "$ref" in s:
            moved.update({k: v for k, v in s.items() if k not in {"$ref", "description"}})
            if moved:
                self.residue[path] = moved
            return {k: s[k] for k in ("$ref", "description") if k in s}
        if moved:
            self.residue[path] = moved
        unknown = [
            k
            for k in s
            if k not in _KEEP
            and k not in _UNSUPPORTED
            and k not in {"allOf", "oneOf", "$schema", "$id"}
        ]
        if unknown:
            self.residue.setdefault(path, {}).update({k: s[k] for k in unknown})
        if "allOf" in s:
            parts = s["allOf"]
            alone = set(s) <= {"allOf", "description", "title"}
            if isinstance(parts, list) and len(parts) == 1 and alone:
                return self.node(parts[0], path, depth)
            raise self.fail(path, "allOf is not supported")
        if "oneOf" in s:  # anyOf is weaker; exclusivity is enforced by validation afterwards
            self.residue.setdefault(path, {})["oneOf"] = "as anyOf"
            out["anyOf"] = [
                self.node(b, f"{path}/oneOf/{i}", depth) for i, b in enumerate(s["oneOf"])
            ]
        for k in ("description", "title", "type", "const"):
            if k in s:
                out[k] = copy.deepcopy(s[k])
        if "const" in s:
            self.chars += len(json.dumps(s["const"]))
        if "enum" in s:
            values = s["enum"]
            out["enum"] = copy.deepcopy(values)
            self.enum_values += len(values)
            strings = [v for v in values if isinstance(v, str)]
            size = sum(len(v) for v in strings)
            self.chars += size
            if len(values) > 250 and size > self.limits.max_large_enum_chars:
                raise self.fail(path, f"an enum of {len(values)} values totals {size} characters")
        if "anyOf" in s:
            out["anyOf"] = [
                self.node(b, f"{path}/anyOf/{i}", depth) for i, b in enumerate(s["anyOf"])
            ]
        types = s.get("type")
        is_object = (
            types == "object"
            or (isinstance(types, list) and "object" in types)
            or (types is None and "properties" in s)
        )
        if is_object:
            self.object(s, out, path, depth + 1)
        if "items" in s:
            out["items"] = self.node(s["items"], f"{path}/items", depth)
        elif types == "array":
            raise self.fail(path, "an array needs an 'items' schema")
        if not ({"type", "enum", "const", "anyOf", "$ref"} & out.keys()):
            raise self.fail(path, "a schema needs a type, enum, const, anyOf or $ref")
        return out

    def object(self, s: dict[str, Any], out: dict[str, Any], path: str, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise self.fail(path, f"more than {self.limits.max_depth} levels of nesting")
        props = s.get("properties", {})
        extra = s.get("additionalProperties", False)
        if not props and extra not in (False, None):
            raise self.fail(path, "objects with free-form keys (maps) are not supported")
        if isinstance(extra, dict) or extra is True:
            self.residue.setdefault(path, {})["additionalProperties"] = extra
        required = set(s.get("required", []))
        self.properties += len(props)
        if self.properties > self.limits.max_properties:
            raise self.fail(path, f"more than {self.limits.max_properties} object properties")
        new_props: dict[str, Any] = {}
        for key, sub in props.items():
            self.chars += len(key)
            child = self.node(sub, f"{path}/properties/{key}", depth)
            if key not in required:
                child = _nullable(child)
                self.nullable.append(f"{path}/properties/{key}")
            new_props[key] = child
        out["type"] = "object"
        out["properties"] = new_props
        out["required"] = list(props)
        out["additionalProperties"] = False


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    t = schema.get("type")
    if "$ref" in schema or "anyOf" in schema:
        branches = schema.get("anyOf") or [{"$ref": schema["$ref"]}]
        if not any(b.get("type") == "null" for b in branches):
            branches = [*branches, {"type": "null"}]
        rest = {k: v for k, v in schema.items() if k not in {"$ref", "anyOf"}}
        return {**rest, "anyOf": branches}
    out = dict(schema)
    if isinstance(t, str) and t != "null":
        out["type"] = [t, "null"]
    elif isinstance(t, list) and "null" not in t:
        out["type"] = [*t, "null"]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def to_openai_strict(
    schema: dict[str, Any], name: str, limits: OpenAILimits | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``response_format`` body for strict mode and the residue it could not express.

    Optional fields become nullable and required, every object gets
    ``additionalProperties: false``, unsupported keywords move to the residue (keyed by JSON
    pointer) to be enforced by validation afterwards.

    Raises
    ------
    OracleSchemaLimitError
        The schema breaks a strict-mode limit or uses a construct strict mode lacks.
    """
    w = _Walker(limits or OpenAILimits())
    root = schema
    if not (root.get("type") == "object" or "properties" in root):
        raise w.fail("#", "the root must be an object")
    body = w.node(root, "#", 0)
    for defs_key in ("$defs", "definitions"):
        if defs_key in root:
            body[defs_key] = {}
            for dname, sub in root[defs_key].items():
                w.chars += len(dname)
                body[defs_key][dname] = w.node(sub, f"#/{defs_key}/{dname}", 0)
    if w.enum_values > w.limits.max_enum_values:
        why = f"{w.enum_values} enum values in total (limit {w.limits.max_enum_values})"
        raise w.fail("#", why)
    if w.chars > w.limits.max_total_chars:
        why = f"{w.chars} characters of names and values (limit {w.limits.max_total_chars})"
        raise w.fail("#", why)
    clean = _NAME_OK.sub("_", name)[:64] or "Output"
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": clean, "schema": body, "strict": True},
    }
    residue = dict(w.residue)
    if w.nullable:
        residue["x-nullable-optional"] = w.nullable
    return response_format, residue


def denullify(value: Any, schema: dict[str, Any], _root: dict[str, Any] | None = None) -> Any:
    """Drop the ``null`` strict mode forces into optional fields whose schema does not allow it.

    Apply to a remote answer before validating it against the original schema.
    """
    root = _root if _root is not None else schema
    if "$ref" in schema and isinstance(schema["$ref"], str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return denullify(value, target, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        out = {}
        for k, v in value.items():
            sub = props.get(k)
            if v is None and k in props and k not in required and not _accepts_null(sub, root):
                continue
            out[k] = denullify(v, sub, root) if isinstance(sub, dict) else v
        for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
            if isinstance(branch, dict) and ("properties" in branch or "$ref" in branch):
                out = denullify(out, branch, root)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [denullify(v, schema["items"], root) for v in value]
    return value


def _accepts_null(schema: Any, root: dict[str, Any]) -> bool:
    if not isinstance(schema, dict):
        return True
    if "$ref" in schema:
        return False
    t = schema.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    if None in schema.get("enum", [1]) or ("const" in schema and schema["const"] is None):
        return True
    return any(_accepts_null(b, root) for b in schema.get("anyOf", []) + schema.get("oneOf", []))


# --- regex form ----------------------------------------------------------------------------

_STRING = r'"([^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_INTEGER = r"-?(0|[1-9][0-9]*)"
_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_SIMPLE = {
    "string": _STRING,
    "integer": _INTEGER,
    "number": _NUMBER,
    "boolean": r"(true|false)",
    "null": "null",
}


def _scalar_regex(s: Any) -> str | None:
    if not isinstance(s, dict):
        return None
    if "enum" in s or "const" in s:
        values = s["enum"] if "enum" in s else [s["const"]]
        if not all(isinstance(v, (str, int, float, bool)) or v is None for v in values):
            return None
        return "(" + "|".join(re.escape(json.dumps(v)) for v in values) + ")"
    t = s.get("type")
    if not isinstance(t, str) or t not in _SIMPLE:
        return None
    constrained = set(s) - {"type", "title", "description", "default", "examples"}
    return None if constrained else _SIMPLE[t]


def to_regex(schema: dict[str, Any], item_sep: str = ", ", key_sep: str = ": ") -> str:
    """A regex for a flat object of simple, unconstrained, required fields.

    Raises
    ------
    SchemaCompileError
        The schema is not such a flat object (nesting, optional fields, constraints).
    """
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        msg = "a regex form exists only for flat objects"
        raise SchemaCompileError(msg)
    props: dict[str, Any] = schema["properties"]
    if set(schema.get("required", [])) != set(props) or not props:
        msg = "a regex form needs every property required"
        raise SchemaCompileError(msg)
    if schema.get("additionalProperties", False) is not False:
        msg = "a regex form cannot express additional properties"
        raise SchemaCompileError(msg)
    parts = []
    for key, sub in props.items():
        value = _scalar_regex(sub)
        if value is None:
            msg = f"property {key!r} is not a simple unconstrained scalar"
            raise SchemaCompileError(msg)
        parts.append(re.escape(json.dumps(key)) + re.escape(key_sep) + value)
    return r"\{" + re.escape(item_sep).join(parts) + r"\}"
