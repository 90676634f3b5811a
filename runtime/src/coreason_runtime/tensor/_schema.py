"""Schemas as the router sees them: normalised, hashed, validated, and compiled per tier."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from coreason_runtime._exceptions import CoreasonError, SchemaError, ValidationFailure

__all__ = ["MAX_SCHEMA_BYTES", "MAX_SCHEMA_DEPTH", "CompiledSchema", "SchemaSpec", "schema_key"]

# Bounds on a raw schema, checked before anything recursive touches it: the deepest schema in
# JSONSchemaBench nests 17 levels, and validators recurse (a few hundred levels crash them).
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_BYTES = 1 << 20


def _check_bounds(schema: dict[str, Any]) -> None:
    """Refuse a schema nested deeper than MAX_SCHEMA_DEPTH or larger than MAX_SCHEMA_BYTES."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            msg = f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels"
            raise SchemaError(msg)
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    size = len(json.dumps(schema, separators=(",", ":"), default=str))
    if size > MAX_SCHEMA_BYTES:
        msg = f"the schema is {size} bytes of JSON; at most {MAX_SCHEMA_BYTES} are accepted"
        raise SchemaError(msg)


def schema_key(json_schema: dict[str, Any]) -> str:
    """A stable hash of a JSON schema (keys sorted), used to key compile caches."""
    canonical = json.dumps(json_schema, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class SchemaSpec:
    """A user's schema, normalised: the JSON schema plus how to validate an output against it.

    ``model`` is the pydantic model when one was given; otherwise outputs validate with
    ``jsonschema`` against ``json_schema`` and the value is the parsed JSON. ``pretty`` asks
    the local grammar for indented output (bounded whitespace) instead of the compact layout;
    it changes the text, not the value, so it is not part of ``key``.
    """

    json_schema: dict[str, Any]
    key: str
    name: str
    model: type[BaseModel] | None = None
    pretty: bool = False

    @classmethod
    def from_user(cls, schema: Any, *, pretty: bool = False) -> SchemaSpec:
        """Accept a pydantic model class or a raw JSON schema dict (``pretty``: see the class).

        Raises
        ------
        SchemaError
            For anything else, or a dict that is not a valid JSON schema.
        """
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            try:
                js = schema.model_json_schema()
            except Exception as e:
                msg = f"cannot build a JSON schema from {schema.__name__}: {e}"
                raise SchemaError(msg) from e
            return cls(
                json_schema=js,
                key=schema_key(js),
                name=schema.__name__,
                model=schema,
                pretty=pretty,
            )
        if isinstance(schema, dict):
            if not schema:
                msg = "an empty schema accepts anything; give at least a 'type'"
                raise SchemaError(msg)
            _check_bounds(schema)
            try:
                validator_cls = jsonschema.validators.validator_for(schema)
                validator_cls.check_schema(schema)
            except jsonschema.SchemaError as e:
                msg = f"not a valid JSON schema: {e.message} (at {'/'.join(map(str, e.path))})"
                raise SchemaError(msg) from e
            title = schema.get("title")
            name = title if isinstance(title, str) and title else "Output"
            return cls(json_schema=schema, key=schema_key(schema), name=name, pretty=pretty)
        kind = schema.__name__ if isinstance(schema, type) else type(schema).__name__
        msg = (
            f"expected a pydantic BaseModel subclass or a JSON schema dict, got {kind}; "
            "wrap plain types in a model, e.g. `class Answer(BaseModel): value: int`"
        )
        raise SchemaError(msg)

    def validate_text(self, text: str) -> Any:
        """Parse and validate a tier's output; returns the value.

        Raises
        ------
        ValidationFailure
            With the exact error text, to be fed back to the model.
        """
        if self.model is not None:
            try:
                return self.model.model_validate_json(text)
            except PydanticValidationError as e:
                bad_json = any(err["type"] == "json_invalid" for err in e.errors())
                raise ValidationFailure(str(e), output=text, invalid_json=bad_json) from e
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            msg = f"output is not valid JSON: {e}"
            raise ValidationFailure(msg, output=text, invalid_json=True) from e
        validator_cls = jsonschema.validators.validator_for(self.json_schema)
        validator = validator_cls(self.json_schema, format_checker=validator_cls.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(value), key=lambda err: list(err.path))
        if errors:
            msg = "; ".join(
                f"{'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}"
                for err in errors[:5]
            )
            raise ValidationFailure(msg, output=text)
        return value

    def validate_value(self, value: Any) -> Any:
        """Validate a Python value (a human's answer); returns the model instance or value."""
        if self.model is not None:
            try:
                return TypeAdapter(self.model).validate_python(value)
            except PydanticValidationError as e:
                raise ValidationFailure(str(e), output=repr(value)) from e
        return self.validate_text(json.dumps(value))


@dataclass
class CompiledSchema:
    """A schema compiled for every kind of tier; a field is ``None`` where compiling failed.

    ``grammar`` is the local tier's grammar (llguidance); ``openai`` the ``response_format``
    body for a strict OpenAI-compatible server, with ``residue`` the keywords strict mode
    cannot express (enforced by validation afterwards); ``regex`` a regular expression for
    SGLang-style servers where one exists. ``errors`` says, per form, why it is missing.
    ``relaxed`` names what the local grammar dropped or weakened from a schema the grammar
    engine refused as written (validation after decoding enforces it).
    """

    spec: SchemaSpec
    grammar: Any = None
    openai: dict[str, Any] | None = None
    residue: dict[str, Any] = field(default_factory=dict)
    regex: str | None = None
    errors: dict[str, CoreasonError] = field(default_factory=dict)
    compile_seconds: float = 0.0
    relaxed: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.spec.key

    def validate_text(self, text: str) -> Any:
        return self.spec.validate_text(text)
