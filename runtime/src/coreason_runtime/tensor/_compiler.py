"""UniversalCompiler: one schema in; an llguidance grammar, a strict OpenAI form, a regex out."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    CoreasonError,
    OracleSchemaLimitError,
    RequestError,
    SchemaCompileError,
    SchemaCompileTimeout,
)
from coreason_runtime.decode._grammar import TokenizerInfo, new_matcher, tokenizer_info
from coreason_runtime.tensor._openai_strict import OpenAILimits, to_openai_strict, to_regex
from coreason_runtime.tensor._relax import relax
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus

__all__ = ["JSON_OPTIONS", "PRETTY_OPTIONS", "LocalGrammar", "UniversalCompiler"]

# Compact but readable JSON: one space after ',' and ':', no free whitespace. A model can then
# neither pad forever with whitespace nor spend tokens on it. These override a schema's own
# "x-guidance" whitespace settings: free whitespace only where the caller asks for it.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
# Pretty output (``SchemaSpec.pretty``): between tokens either nothing, one space, or one
# newline and an indentation of at most 32 spaces, so whitespace cannot run away either.
PRETTY_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": True,
    "whitespace_pattern": r"(\n {0,32}| )?",
    "item_separator": ",",
    "key_separator": ":",
}
_CACHE_SIZE = 1024


@dataclass
class LocalGrammar:
    """An llguidance grammar, with a ready matcher for the tokenizer it was compiled against.

    :meth:`matcher` hands out fresh matchers: a copy of the compiled prototype when the
    tokenizer matches (cheap), otherwise a new compile. ``relaxed`` names what was dropped
    or weakened from a schema the engine refused as written (empty when it compiled as is):
    outputs are validated against the original schema, which enforces it.
    """

    grammar: str
    tokenizer_ident: str | None
    compile_seconds: float
    relaxed: tuple[str, ...] = ()
    _proto: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _others: dict[str, Any] = field(default_factory=dict, repr=False)

    def matcher(self, info: TokenizerInfo) -> Any:
        """A fresh ``LLMatcher`` at the start of the grammar.

        Raises
        ------
        SchemaCompileError
            The grammar does not compile against this tokenizer.
        """
        with self._lock:
            if self._proto is not None and info.ident == self.tokenizer_ident:
                return self._proto.deep_copy()
            proto = self._others.get(info.ident)
            if proto is None:  # another tokenizer: compile once for it, then copy
                proto = self._others[info.ident] = _new_matcher(info, self.grammar)
            return proto.deep_copy()


def _new_matcher(info: TokenizerInfo, grammar: str) -> Any:
    try:
        return new_matcher(info, grammar)
    except RequestError as e:
        msg = f"llguidance cannot compile the schema: {e.message.removeprefix('invalid grammar: ')}"
        raise SchemaCompileError(msg) from e


def compile_grammar(
    json_schema: dict[str, Any],
    info: TokenizerInfo | None,
    *,
    relaxed: bool = True,
    pretty: bool = False,
) -> LocalGrammar:
    """Compile a JSON schema to an llguidance grammar (and matcher, given a tokenizer).

    With ``relaxed`` a schema the engine refuses compiles as its least relaxed form the engine
    accepts (:mod:`._relax`), named in ``LocalGrammar.relaxed``. ``pretty`` allows bounded
    whitespace (:data:`PRETTY_OPTIONS`) instead of the compact layout (:data:`JSON_OPTIONS`).

    Raises
    ------
    SchemaCompileError
        Unsatisfiable or invalid schemas (and, without ``relaxed``, unsupported keywords):
        deterministic, never retried.
    """
    options = PRETTY_OPTIONS if pretty else JSON_OPTIONS
    if not relaxed:
        return _compile_exact(json_schema, info, options)
    started = time.perf_counter()
    grammar, _, steps = relax(json_schema, lambda s: _compile_exact(s, info, options), _is_refusal)
    grammar.relaxed = tuple(steps)
    grammar.compile_seconds = time.perf_counter() - started
    return grammar


def _is_refusal(error: Exception) -> bool:
    """A refusal a relaxation may get past (not an unsatisfiable schema)."""
    return isinstance(error, SchemaCompileError) and "unsatisfiable" not in error.message.lower()


_UNSATISFIABLE = "the schema is unsatisfiable"


def _compile_exact(
    json_schema: dict[str, Any], info: TokenizerInfo | None, options: dict[str, Any]
) -> LocalGrammar:
    import llguidance

    started = time.perf_counter()
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json_schema,
            overrides=options,  # type: ignore[arg-type]  # a TypedDict at heart
        )
    except (ValueError, TypeError) as e:
        msg = f"llguidance cannot read the schema: {e}"
        raise SchemaCompileError(msg) from e
    if info is None:
        err = llguidance.LLMatcher.validate_grammar(grammar)
        if err and not err.startswith("WARNING"):
            msg = f"llguidance cannot compile the schema: {err}"
            raise SchemaCompileError(msg)
        return LocalGrammar(grammar, None, time.perf_counter() - started)
    proto = _new_matcher(info, grammar)
    first = proto.compute_bitmask()
    if proto.is_error():  # e.g. a $ref cycle with no way out; its error is a state dump
        msg = f"{_UNSATISFIABLE}: no JSON value can be generated (a $ref cycle with no base case?)"
        raise SchemaCompileError(msg)
    # An unsatisfiable schema compiles to a grammar that allows nothing at all.
    if not proto.is_accepting() and not any(first):
        msg = f"{_UNSATISFIABLE}: no JSON value satisfies it"
        raise SchemaCompileError(msg)
    return LocalGrammar(grammar, info.ident, time.perf_counter() - started, _proto=proto)


# One process-wide cache: a compile that outlives its caller's timeout still fills it.
_Entry = LocalGrammar | SchemaCompileError
_CACHE: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()
_INFLIGHT: dict[tuple[str, str], concurrent.futures.Future[_Entry]] = {}
_CACHE_LOCK = threading.Lock()


def _cache_put(key: tuple[str, str], entry: _Entry) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = entry
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        _INFLIGHT.pop(key, None)


def _grammar_future(
    key: tuple[str, str],
    json_schema: dict[str, Any],
    info: TokenizerInfo | None,
    *,
    relaxed: bool = True,
    pretty: bool = False,
) -> concurrent.futures.Future[_Entry]:
    """The cached result, the compile already running, or a new compile in a daemon thread."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            done: concurrent.futures.Future[_Entry] = concurrent.futures.Future()
            done.set_result(_CACHE[key])
            return done
        running = _INFLIGHT.get(key)
        if running is not None:
            return running
        fut: concurrent.futures.Future[_Entry] = concurrent.futures.Future()
        _INFLIGHT[key] = fut

    def work() -> None:
        try:
            entry: _Entry = compile_grammar(json_schema, info, relaxed=relaxed, pretty=pretty)
        except SchemaCompileError as e:
            entry = e
        except Exception as e:  # a crash inside the grammar engine is a compile failure too
            entry = SchemaCompileError(f"llguidance failed on the schema: {e!r}")
        _cache_put(key, entry)
        fut.set_result(entry)

    # A daemon thread, not an executor: a pathological compile must never block exit.
    threading.Thread(target=work, name="coreason-compile", daemon=True).start()
    return fut


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` where objects that do not mention extra keys forbid them.

    Used for pydantic models, which ignore extra keys anyway: the grammar then never lets a
    model wander into keys nobody reads.
    """
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: closed_objects(sub) for name, sub in v.items()}
        elif k in _SUBSCHEMAS:
            out[k] = closed_objects(v)
        else:
            out[k] = v
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _closable(schema: Any) -> bool:
    """Whether closing objects keeps the schema's meaning (no object composition)."""
    text = repr(schema)
    return "'allOf'" not in text and "'unevaluatedProperties'" not in text


_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SUBSCHEMAS = frozenset(
    {
        "items",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "prefixItems",
        "additionalProperties",
        "if",
        "then",
        "else",
    }
)


def clear_cache() -> None:
    """Forget every compiled grammar (tests, benchmarks)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class UniversalCompiler:
    """Compiles a :class:`SchemaSpec` for every kind of tier, cached by schema and tokenizer.

    Parameters
    ----------
    tokenizer
        What the local tier decodes with (a ``LoadedModel``, a fast HF tokenizer or a
        :class:`TokenizerInfo`); ``None`` compiles the grammar without a tokenizer check.
    timeout
        Seconds to wait for a grammar compile; past it the local tier is skipped
        (:class:`SchemaCompileTimeout` in ``errors["grammar"]``) while the compile goes on in
        the background and fills the cache for next time.
    bus
        Where ``schema.compiled`` events go.
    strict
        Close objects that do not mention extra keys (as xgrammar's strict mode does): the
        grammar then never lets a model wander into keys the schema does not name. Every
        output still validates against the original schema; only the grammar is narrower.
        Schemas combining objects with ``allOf``/``unevaluatedProperties`` are left open,
        since closing their parts separately could change their meaning. ``strict=False``
        compiles raw schemas faithfully (JSONSchemaBench measures that).
    relax
        A schema the grammar engine refuses as written compiles relaxed (the keywords it
        cannot express dropped or weakened, named in ``CompiledSchema.relaxed``) and the
        local tier decodes under it; validation against the original schema enforces the
        rest. ``relax=False`` skips the local tier for such schemas instead.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        timeout: float = 5.0,
        bus: EventBus | None = None,
        *,
        openai_limits: OpenAILimits | None = None,
        strict: bool = True,
        relax: bool = True,
    ) -> None:
        self.strict = strict
        self.relax = relax
        self.info = tokenizer_info(tokenizer)
        self.timeout = timeout
        self.bus = bus
        self.openai_limits = openai_limits or OpenAILimits()

    @classmethod
    def for_runtime(cls, rt: Any, tokenizer: Any = None) -> UniversalCompiler:
        return cls(tokenizer, timeout=rt.config.compile_timeout, bus=rt.bus)

    @property
    def tokenizer_ident(self) -> str:
        return self.info.ident if self.info is not None else "-"

    def compile(self, spec: SchemaSpec | Any, *, timeout: float | None = None) -> CompiledSchema:
        """Compile every form; a form that fails is ``None`` with its typed error in ``errors``.

        Raises
        ------
        SchemaError
            ``spec`` is not a schema at all (only when given a raw user schema).
        """
        if not isinstance(spec, SchemaSpec):
            spec = SchemaSpec.from_user(spec)
        started = time.perf_counter()
        errors: dict[str, CoreasonError] = {}
        grammar: LocalGrammar | None = None
        wait = self.timeout if timeout is None else timeout
        target, key = spec.json_schema, spec.key
        if spec.model is not None or (self.strict and _closable(spec.json_schema)):
            target, key = closed_objects(spec.json_schema), f"{spec.key}:closed"
        key += (":exact" if not self.relax else "") + (":pretty" if spec.pretty else "")
        fut = _grammar_future(
            (key, self.tokenizer_ident), target, self.info, relaxed=self.relax, pretty=spec.pretty
        )
        try:
            entry = fut.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            msg = f"compiling schema {spec.name!r} took longer than {wait:g} s; local tier skipped"
            errors["grammar"] = SchemaCompileTimeout(msg)
        else:
            if isinstance(entry, SchemaCompileError):  # a copy: the cached one is shared
                errors["grammar"] = SchemaCompileError(entry.message, tier="local")
            else:
                grammar = entry
        openai: dict[str, Any] | None = None
        residue: dict[str, Any] = {}
        try:
            openai, residue = to_openai_strict(spec.json_schema, spec.name, self.openai_limits)
        except OracleSchemaLimitError as e:
            errors["openai"] = e
        regex: str | None = None
        try:
            regex = to_regex(spec.json_schema)
        except SchemaCompileError as e:
            errors["regex"] = e
        compiled = CompiledSchema(
            spec=spec,
            grammar=grammar,
            openai=openai,
            residue=residue,
            regex=regex,
            errors=errors,
            compile_seconds=time.perf_counter() - started,
            relaxed=grammar.relaxed if grammar is not None else (),
        )
        if self.bus is not None:
            self.bus.emit(
                EventType.SCHEMA_COMPILED,
                source="compiler",
                key=spec.key,
                name=spec.name,
                seconds=compiled.compile_seconds,
                forms=[
                    f
                    for f, v in (("grammar", grammar), ("openai", openai), ("regex", regex))
                    if v is not None
                ],
                errors={k: f"{type(v).__name__}: {v}" for k, v in errors.items()},
                relaxed=list(compiled.relaxed),
            )
        return compiled
