"""The tier matrix: every tier the router may use, configured in code, in TOML and by environment.

A TOML file (``$COREASON_TIERS_FILE``, else ``$COREASON_HOME/tiers.toml``)::

    [route]
    policy = "learned"          # learned | static | linucb | sw-linucb
    lam = 1e-4                  # λ: reward = verified success − λ·C

    [[tier]]
    name = "local"
    kind = "local"              # the runtime's in-kernel model (``model`` names another)

    [[tier]]
    name = "kinetic"
    kind = "kinetic"            # an OpenAI-compatible server enforcing the schema itself
    base_url = "http://127.0.0.1:8000/v1"
    model = "smollm2"
    weight_in = 1
    weight_out = 2

    [[tier]]
    name = "oracle"
    kind = "oracle"
    base_url = "https://api.example.com/v1"
    model = "big-model"
    api_key_env = "EXAMPLE_API_KEY"   # the key stays in the environment, never in a file
    weight_in = 10
    weight_out = 30
    price_in = 2.5e-6                 # money per token, for reports
    price_out = 1e-5
    capability = { k_model = 1.0 }

    [[tier]]
    name = "derivatives"
    kind = "tool"
    function = "mypackage.tools:derivative_tier"   # returns a Tier, or answers (spec, prompt)
    capability = { families = ["calculus"] }

Environment (over the file): ``COREASON_TIERS=local,oracle`` picks and orders tiers,
``COREASON_TIER_<NAME>_<FIELD>=value`` sets one field (``COREASON_TIER_ORACLE_WEIGHT_OUT=30``),
``COREASON_ROUTE_POLICY`` and ``COREASON_ROUTE_LAM`` the policy. Without a file the matrix is
today's cascade: the local model, then the oracle of ``COREASON_ORACLE_*`` if one is set.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coreason_runtime._config import RuntimeConfig
from coreason_runtime._exceptions import ConfigurationError

__all__ = ["Capability", "RouteSettings", "TierSpec", "load_matrix"]

TierKind = Literal["local", "kinetic", "oracle", "tool", "custom"]
POLICIES = ("learned", "static", "linucb", "sw-linucb")


class Capability(BaseModel):
    """What a tier declares it can do; a request beyond it skips the tier.

    ``k_model`` (0..1) is compared with the request's ``k_req`` (schema depth and size);
    ``families`` (when set) are the task families it answers; ``max_depth`` and
    ``max_fields`` bound the schemas it takes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k_model: float = Field(default=1.0, ge=0.0, le=1.0)
    families: tuple[str, ...] | None = None
    max_depth: int | None = Field(default=None, ge=0)
    max_fields: int | None = Field(default=None, ge=0)


class TierSpec(BaseModel):
    """One row of the tier matrix.

    ``weight_in`` / ``weight_out`` are the tier's C weights (``None``: the budget cage's);
    ``price_in`` / ``price_out`` its money per token (reports only). For a ``tool`` tier the
    output "tokens" are CPU milliseconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: TierKind
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    tokenizer: str | None = None  # counts a server's streamed tokens when it sends no usage
    function: str | None = None
    weight_in: float | None = Field(default=None, gt=0)
    weight_out: float | None = Field(default=None, gt=0)
    price_in: float = Field(default=0.0, ge=0)
    price_out: float = Field(default=0.0, ge=0)
    capability: Capability = Field(default_factory=lambda: Capability())
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _not_human(cls, v: str) -> str:
        if v in ("human", "cache"):
            msg = f"{v!r} is reserved (the Oracle Circuit and the subgoal cache)"
            raise ValueError(msg)
        return v

    def money(self, tokens_in: int, tokens_out: int) -> float:
        return self.price_in * tokens_in + self.price_out * tokens_out


class RouteSettings(BaseModel):
    """How tiers are chosen: the policy, λ, exploration, the escalation gate, the growth
    budget of the policy's network, how much history is re-learned at start, and whether the
    prompt is embedded (``embed_dims``, with the runtime's local model's token embeddings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = "learned"
    lam: float = Field(default=1e-4, ge=0)
    alpha: float = Field(default=0.3, ge=0)
    gate: bool = True
    growth_budget: int = Field(default=64, ge=0)
    history: int = Field(default=5000, ge=0)
    embed_dims: int = Field(default=0, ge=0, le=64)  # > 0: embed prompts with the local model

    @field_validator("policy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in POLICIES:
            msg = f"unknown routing policy {v!r}; choose one of {', '.join(POLICIES)}"
            raise ValueError(msg)
        return v


def _defaults(config: RuntimeConfig) -> list[TierSpec]:
    """Today's cascade: the local model, then the configured oracle."""
    specs = [TierSpec(name="local", kind="local")]
    oracle = config.oracle
    if oracle is not None:
        specs.append(
            TierSpec(
                name="oracle",
                kind="oracle",
                base_url=oracle.base_url,
                model=oracle.model,
                timeout=oracle.timeout,
                tokenizer=oracle.tokenizer,
            )
        )
    return specs


def _file(home: Path, env: Mapping[str, str]) -> Path | None:
    explicit = env.get("COREASON_TIERS_FILE")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            msg = f"COREASON_TIERS_FILE names {path}, which is not a file"
            raise ConfigurationError(msg)
        return path
    path = home / "tiers.toml"
    return path if path.is_file() else None


def _parse(path: Path) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        msg = f"cannot read the tier matrix {path}: {e}"
        raise ConfigurationError(msg) from e
    unknown = sorted(set(data) - {"tier", "route"})
    if unknown:
        msg = f"{path}: unknown table(s) {unknown}; expected [[tier]] and [route]"
        raise ConfigurationError(msg)
    tiers = data.get("tier")
    if tiers is not None and not isinstance(tiers, list):
        msg = f"{path}: 'tier' must be an array of tables ([[tier]])"
        raise ConfigurationError(msg)
    return tiers, dict(data.get("route", {}))


def _env_value(text: str) -> Any:
    """A TOML scalar or inline value from an environment variable (else the text itself)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _env_overrides(rows: list[dict[str, Any]], env: Mapping[str, str]) -> list[dict[str, Any]]:
    by_name = {str(r.get("name", "")).upper().replace("-", "_").replace(".", "_"): r for r in rows}
    fields = sorted(TierSpec.model_fields, key=len, reverse=True)
    for key, text in env.items():
        if not key.startswith("COREASON_TIER_"):
            continue
        rest = key.removeprefix("COREASON_TIER_")
        for f in fields:
            suffix = "_" + f.upper()
            if rest.endswith(suffix) and rest[: -len(suffix)] in by_name:
                by_name[rest[: -len(suffix)]][f] = _env_value(text)
                break
        else:
            msg = f"{key}: no tier and field match (tiers: {', '.join(by_name) or 'none'})"
            raise ConfigurationError(msg)
    return rows


def _pick(specs: list[TierSpec], env: Mapping[str, str]) -> list[TierSpec]:
    wanted = env.get("COREASON_TIERS")
    if not wanted:
        return specs
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    known = {s.name: s for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        msg = f"COREASON_TIERS names unknown tier(s) {unknown}; the matrix has {list(known)}"
        raise ConfigurationError(msg)
    return [known[n] for n in names]


def _route(table: dict[str, Any], env: Mapping[str, str]) -> RouteSettings:
    for f in RouteSettings.model_fields:
        value = env.get(f"COREASON_ROUTE_{f.upper()}")
        if value is not None:
            table[f] = _env_value(value)
    try:
        return RouteSettings(**table)
    except ValidationError as e:
        msg = f"routing settings: {e.errors(include_url=False)}"
        raise ConfigurationError(msg) from e


def load_matrix(
    config: RuntimeConfig, env: Mapping[str, str] | None = None
) -> tuple[list[TierSpec], RouteSettings]:
    """The tier specs and routing settings: defaults, then the TOML file, then environment.

    Raises
    ------
    ConfigurationError
        An unreadable file, an unknown field or tier, a bad value, or duplicate names.
    """
    env = os.environ if env is None else env
    path = _file(config.home, env)
    tiers, route = _parse(path) if path is not None else (None, {})
    rows = (
        [dict(t) for t in tiers]
        if tiers is not None
        else [s.model_dump(exclude_defaults=True) for s in _defaults(config)]
    )
    rows = _env_overrides(rows, env)
    try:
        specs = [TierSpec(**r) for r in rows]
    except ValidationError as e:
        where = f" in {path}" if path is not None else ""
        msg = f"bad tier{where}: {e.errors(include_url=False)}"
        raise ConfigurationError(msg) from e
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        msg = f"tier names must be unique, got {names}"
        raise ConfigurationError(msg)
    return _pick([s for s in specs if s.enabled], env), _route(route, env)
