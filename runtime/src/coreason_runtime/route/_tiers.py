"""The tier matrix of a runtime, built into tiers; tool tiers that answer the schemas they can."""

from __future__ import annotations

import importlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coreason_runtime._config import OracleConfig
from coreason_runtime._exceptions import ConfigurationError, TierError
from coreason_runtime.route._matrix import Capability, RouteSettings, TierSpec, load_matrix
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._types import (
    BlackBoxTier,
    Messages,
    Meter,
    Tier,
    TierOutput,
    TierRequest,
)

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.route._routing import Routing

__all__ = ["FunctionTier", "TierMatrix"]

Answer = Callable[[SchemaSpec, str], Any]


class FunctionTier(BlackBoxTier):
    """A tool tier: a function answers the requests it can, priced by its CPU time.

    ``fn(spec, prompt)`` returns the value (a pydantic instance or JSON-able data), validated
    by the router like any tier's output; raising ``ValueError`` declines the request (the
    cascade moves on). ``accepts(spec)`` says which schemas it answers at all: the routing
    policy skips it for the others. Its C is its CPU time charged as output units of
    ``ms_per_unit`` milliseconds (at the tier's ``weight_out``), at least one; a request's
    ``max_tokens`` therefore bounds the CPU a tool may spend (past it the charge raises
    ``BudgetExceededError`` like any tier's).

    Parameters
    ----------
    name:
        The tier's name in results and ledgers.
    fn:
        The answering function (SymPy, a simulator, a lookup ...).
    accepts:
        Which schemas it answers; by default every one.
    ms_per_unit:
        CPU milliseconds per charged unit.
    """

    def __init__(
        self,
        name: str,
        fn: Answer,
        *,
        accepts: Callable[[SchemaSpec], bool] | None = None,
        ms_per_unit: float = 10.0,
    ) -> None:
        self.name = name
        self.fn = fn
        self._accepts = accepts
        self.ms_per_unit = ms_per_unit

    @property
    def model_name(self) -> str:
        return f"tool:{self.name}"

    def accepts(self, spec: SchemaSpec) -> bool:
        """Whether this tool answers ``spec`` at all."""
        return True if self._accepts is None else bool(self._accepts(spec))

    def compile(self, spec: SchemaSpec) -> CompiledSchema:
        """A tool needs no grammar and no strict form: its value is validated afterwards."""
        return CompiledSchema(spec=spec)

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        return 0

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        prompt = next((m["content"] for m in request.messages if m["role"] == "user"), "")
        meter.check(tokens_out=1)  # the smallest charge must fit before anything runs
        t0 = time.thread_time()
        try:
            value = self.fn(request.schema.spec, prompt)
        except ValueError as e:
            msg = f"tool tier {self.name!r} declined: {e}"
            raise TierError(msg, tier=self.name, workflow_id=request.workflow_id) from e
        finally:
            cpu_ms = (time.thread_time() - t0) * 1000.0
            units = max(1, math.ceil(cpu_ms / self.ms_per_unit))
            meter.charge(tokens_out=units)
        if isinstance(value, BaseModel):
            text = value.model_dump_json()
        else:
            text = json.dumps(value, default=str)
        return TierOutput(text=text, tokens_in=0, tokens_out=units, model=self.model_name)


def _import(path: str, tier: str) -> Any:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        msg = f"tier {tier!r}: function must be 'module:attribute', got {path!r}"
        raise ConfigurationError(msg)
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        msg = f"tier {tier!r}: cannot import {path!r}: {e}"
        raise ConfigurationError(msg) from e
    return obj


def _api_key(spec: TierSpec, rt: Coordinator) -> str | None:
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            msg = f"tier {spec.name!r}: ${spec.api_key_env} is not set"
            raise ConfigurationError(msg)
        return key
    oracle = rt.config.oracle
    if oracle is not None and oracle.base_url == spec.base_url:
        return oracle.api_key
    return None


def _remote(spec: TierSpec, rt: Coordinator) -> Tier:
    from coreason_runtime.tensor._remote import RemoteTier

    if not spec.base_url:
        msg = f"tier {spec.name!r} ({spec.kind}) needs a base_url"
        raise ConfigurationError(msg)
    from coreason_runtime.tensor._usage import TokenizerCounter

    config = OracleConfig(
        base_url=spec.base_url,
        model=spec.model or "default",
        api_key=_api_key(spec, rt),
        timeout=spec.timeout,
        tokenizer=spec.tokenizer,
    )
    # streams without usage per chunk are counted with the tier's tokenizer, else the local
    # model's (loaded on first use)
    counter = TokenizerCounter(spec.tokenizer or rt.config.model)
    tier = RemoteTier(config, rt.bus, token_counter=counter)
    tier.name = spec.name
    return tier


def _local(spec: TierSpec, rt: Coordinator) -> Tier:
    from coreason_runtime.tensor._wiring import LazyLocalTier

    return LazyLocalTier(rt, model=spec.model, name=spec.name)


def _tool(spec: TierSpec, rt: Coordinator) -> Tier:
    if not spec.function:
        msg = f"tool tier {spec.name!r} needs function = 'module:attribute'"
        raise ConfigurationError(msg)
    obj = _import(spec.function, spec.name)
    if isinstance(obj, Tier):
        return obj
    if callable(obj):
        return FunctionTier(spec.name, obj)
    msg = f"tool tier {spec.name!r}: {spec.function!r} is neither a Tier nor a function"
    raise ConfigurationError(msg)


_BUILDERS: dict[str, Callable[[TierSpec, Coordinator], Tier]] = {
    "local": _local,
    "kinetic": _remote,
    "oracle": _remote,
    "tool": _tool,
}


class TierMatrix:
    """Every tier of a runtime, in cascade order, with its weights, price and capability.

    Built from configuration (:func:`load_matrix`: defaults, ``tiers.toml``, environment) and
    changed in code with :meth:`add` / :meth:`remove`, which re-install the tiers on the
    router. :meth:`build` makes the tiers (once per spec) and gives each its cost weights on
    the budget cage.
    """

    def __init__(self, rt: Coordinator, specs: list[TierSpec], settings: RouteSettings) -> None:
        self._rt = rt
        self.specs = list(specs)
        self.settings = settings
        self._custom: dict[str, Tier] = {}
        self._built: dict[str, tuple[TierSpec, Tier]] = {}
        self._routing: Routing | None = None
        self._lock = threading.RLock()

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> TierMatrix:
        """The matrix of ``rt``: its defaults, ``$COREASON_HOME/tiers.toml``, environment."""
        specs, settings = load_matrix(rt.config)
        return cls(rt, specs, settings)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def spec(self, name: str) -> TierSpec:
        for s in self.specs:
            if s.name == name:
                return s
        msg = f"no tier named {name!r} in the matrix; it has {self.names}"
        raise ConfigurationError(msg)

    def add(
        self,
        tier: Tier | TierSpec,
        *,
        capability: Capability | None = None,
        weight_in: float | None = None,
        weight_out: float | None = None,
        price_in: float = 0.0,
        price_out: float = 0.0,
        position: int | None = None,
    ) -> TierSpec:
        """Add (or replace, by name) a tier: a :class:`TierSpec`, or a tier object made in code
        with its weights, price and capability. Installs the new cascade on the router.

        Raises
        ------
        ConfigurationError
            A bad spec; nothing changes.
        """
        if isinstance(tier, TierSpec):
            spec = tier
        else:
            fields: dict[str, Any] = {"name": tier.name, "kind": "custom"}
            fields.update(weight_in=weight_in, weight_out=weight_out)
            fields.update(price_in=price_in, price_out=price_out)
            fields["capability"] = capability or Capability()
            try:
                spec = TierSpec(**fields)
            except ValueError as e:
                msg = f"bad tier {tier.name!r}: {e}"
                raise ConfigurationError(msg) from e
        with self._lock:
            if not isinstance(tier, TierSpec):
                self._custom[spec.name] = tier
            rest = [s for s in self.specs if s.name != spec.name]
            rest.insert(len(rest) if position is None else position, spec)
            self.specs = rest
        self.install()
        return spec

    def remove(self, name: str) -> None:
        """Take a tier out of the cascade (and close it)."""
        self.spec(name)
        with self._lock:
            self.specs = [s for s in self.specs if s.name != name]
            self._custom.pop(name, None)
            built = self._built.pop(name, None)
        self.install()
        if built is not None:
            built[1].close()

    def build(self) -> list[Tier]:
        """The tiers in cascade order (each built once per spec), their weights on the cage."""
        with self._lock:
            tiers = [self._tier(s) for s in self.specs]
        cage = self._rt.budgets
        for s in self.specs:
            if s.weight_in is not None or s.weight_out is not None:
                cage.set_tier_weights(s.name, s.weight_in, s.weight_out)
        return tiers

    def _tier(self, spec: TierSpec) -> Tier:
        built = self._built.get(spec.name)
        if built is not None and built[0] == spec:
            return built[1]
        if spec.kind == "custom":
            tier = self._custom[spec.name]
        else:
            tier = _BUILDERS[spec.kind](spec, self._rt)
        self._built[spec.name] = (spec, tier)
        return tier

    def install(self) -> None:
        """Give the router the matrix's tiers (after :meth:`add` or :meth:`remove`)."""
        if self._routing is not None:
            self._routing.retier(self.names, {s.name: s for s in self.specs})
        self._rt.router.set_tiers(self.build())

    def routing(self) -> Routing:
        """The routing over this matrix (its policy, history, gate), built once."""
        with self._lock:
            if self._routing is None:
                from coreason_runtime.route._runtime import routing_for_runtime

                self._routing = routing_for_runtime(self._rt, self.settings, self.specs)
            return self._routing

    def close(self) -> None:
        """Close the routing history (the tiers are the router's to close)."""
        if self._routing is not None:
            self._routing.close()

    def __repr__(self) -> str:
        rows = ", ".join(f"{s.name}:{s.kind}" for s in self.specs)
        return f"<TierMatrix [{rows}] policy={self.settings.policy}>"
