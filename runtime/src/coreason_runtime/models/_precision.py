"""Per-operator precision maps (POPB): which format each module of a model runs in.

A :class:`PrecisionMap` names, for the modules that do not stay in fp32, the format they run
in (``bf16``, ``int8``, ``int4`` on the CPU; ``bf16``, ``fp16``, ``fp8`` on CUDA; see
:mod:`._formats`), the kind of device it was built for, the quality budget it was chosen
under, and what validation measured. It is saved beside the converted model
(``$COREASON_HOME/models/<model>/``) as ``precision.json`` (a CPU map) or
``precision-cuda.json`` (a CUDA map) and applied when the model loads on that kind of device.
A map is only applied once validated for exactly these weights on that kind of device; one
that breaks its budget is refused with :class:`~coreason_runtime.PrecisionBudgetError`, one
for the other kind of device with :class:`~coreason_runtime.PrecisionMapError`.

``sensitive`` lists modules that keep a full-precision copy beside their low-precision one:
steps the decode loop judges sensitive run them at full precision (per token group).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import PrecisionBudgetError, PrecisionMapError

if TYPE_CHECKING:
    from coreason_runtime.models._formats import PrecisionSwitch

__all__ = [
    "MAP_FILE",
    "PROBE_FILE",
    "PrecisionMap",
    "QualityBudget",
    "Validation",
    "apply_map",
    "map_file",
    "probe_file",
    "read_map",
    "resolve_map",
    "write_map",
]

logger = logging.getLogger("coreason_runtime.models")

MAP_FILE = "precision.json"
PROBE_FILE = "precision-probe.json"
_VERSION = 1


def map_file(device: str = "cpu") -> str:
    """The file name of the map for a kind of device: ``precision.json`` for the CPU (as
    before maps had devices), ``precision-cuda.json`` for CUDA."""
    return MAP_FILE if device == "cpu" else f"precision-{device}.json"


def probe_file(device: str = "cpu") -> str:
    """The file name of the probe table for a kind of device (as :func:`map_file`)."""
    return PROBE_FILE if device == "cpu" else f"precision-probe-{device}.json"


@dataclass(frozen=True)
class QualityBudget:
    """How much quality a map may cost against fp32, measured on the validation set.

    ``ppl_increase`` is relative (0.01: at most 1% higher perplexity); ``kl`` bounds the mean
    next-token KL divergence (nats) when set; ``greedy_match`` the least fraction of greedy
    tokens that must agree with fp32 on the fixed prompts (before the first divergence) when
    set.
    """

    ppl_increase: float = 0.01
    kl: float | None = None
    greedy_match: float | None = None

    def breaches(self, v: Validation) -> list[str]:
        """What ``v`` breaks, in words (empty when it keeps the budget)."""
        out = []
        if v.ppl_increase > self.ppl_increase:
            out.append(f"perplexity +{100 * v.ppl_increase:.2f}% > +{100 * self.ppl_increase:g}%")
        if self.kl is not None and v.kl_mean > self.kl:
            out.append(f"mean KL {v.kl_mean:.4f} > {self.kl:g}")
        if self.greedy_match is not None and v.greedy_match < self.greedy_match:
            out.append(f"greedy agreement {v.greedy_match:.2f} < {self.greedy_match:g}")
        return out


@dataclass(frozen=True)
class Validation:
    """What a map did on the validation text and the fixed prompts, against fp32."""

    ppl_fp32: float
    ppl: float
    kl_mean: float
    greedy_match: float
    greedy_exact: int
    prompts: int
    tokens: int
    torch: str

    @property
    def ppl_increase(self) -> float:
        return self.ppl / self.ppl_fp32 - 1 if self.ppl_fp32 > 0 else math.inf


@dataclass(frozen=True)
class PrecisionMap:
    """The format of every module that does not run in fp32, for one model's weights.

    Build one with :func:`coreason_runtime.models.build_precision_map`; apply it with
    :func:`apply_map` (``load_model`` does it for the map saved beside a model).
    """

    model: str
    revision: str
    modules: dict[str, str]
    budget: QualityBudget = QualityBudget()
    validation: Validation | None = None
    sensitive: tuple[str, ...] = ()
    cost_us: float = 0.0
    cost_us_fp32: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def valid(self) -> bool:
        """Validated and within its budget."""
        return self.validation is not None and not self.budget.breaches(self.validation)

    def counts(self) -> dict[str, int]:
        """How many modules run in each non-fp32 format."""
        out: dict[str, int] = {}
        for fmt in self.modules.values():
            out[fmt] = out.get(fmt, 0) + 1
        return dict(sorted(out.items()))

    def check(self) -> None:
        """Raise :class:`PrecisionBudgetError` unless the map is validated within budget."""
        v = self.validation
        if v is None:
            msg = f"the precision map for {self.model} was never validated; it is not applied"
            raise PrecisionBudgetError(msg, measured={}, budget=asdict(self.budget))
        broken = self.budget.breaches(v)
        if broken:
            msg = f"the precision map for {self.model} breaks its budget: {'; '.join(broken)}"
            measured = {
                "ppl_increase": v.ppl_increase,
                "kl_mean": v.kl_mean,
                "greedy_match": v.greedy_match,
            }
            raise PrecisionBudgetError(msg, measured=measured, budget=asdict(self.budget))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = _VERSION
        data["sensitive"] = list(self.sensitive)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrecisionMap:
        """Read a map written by :meth:`to_json`; :class:`PrecisionMapError` if malformed."""
        try:
            if data.get("version") != _VERSION:
                msg = f"precision map version {data.get('version')!r} (this runtime reads 1)"
                raise PrecisionMapError(msg)
            val = data.get("validation")
            return cls(
                model=str(data["model"]),
                revision=str(data["revision"]),
                modules={str(k): str(v) for k, v in data["modules"].items()},
                budget=QualityBudget(**data.get("budget", {})),
                validation=Validation(**val) if val else None,
                sensitive=tuple(str(s) for s in data.get("sensitive", ())),
                cost_us=float(data.get("cost_us", 0.0)),
                cost_us_fp32=float(data.get("cost_us_fp32", 0.0)),
                notes=dict(data.get("notes", {})),
                device=str(data.get("device", "cpu")),  # maps before devices were CPU maps
            )
        except (KeyError, TypeError, AttributeError) as e:
            msg = f"malformed precision map: {e}"
            raise PrecisionMapError(msg) from e


def write_map(pmap: PrecisionMap, folder: Path, name: str | None = None) -> Path:
    """Save ``pmap`` as ``folder/name`` atomically (a reader sees the old file or the new);
    ``name`` defaults to the file for the map's device (:func:`map_file`)."""
    return _write_json(pmap.to_json(), Path(folder) / (name or map_file(pmap.device)))


def _write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    Path(tmp).chmod(0o644)
    os.replace(tmp, path)
    return path


def read_map(path: Path, device: str = "cpu") -> PrecisionMap | None:
    """The map at ``path`` (a file, or a model folder holding one for the kind of ``device``);
    None if there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / map_file(device)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        msg = f"cannot read precision map {path}: {e}"
        raise PrecisionMapError(msg) from e
    if not isinstance(data, dict):
        msg = f"precision map {path} is not a JSON object"
        raise PrecisionMapError(msg)
    return PrecisionMap.from_json(data)


def _parent(model: Any, name: str) -> tuple[Any, str]:
    owner, _, attr = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def apply_map(
    model: Any,
    pmap: PrecisionMap,
    *,
    token_groups: bool = False,
    switch: PrecisionSwitch | None = None,
) -> dict[str, int]:
    """Convert ``model``'s modules in place to the formats ``pmap`` names.

    With ``token_groups`` the modules listed in ``pmap.sensitive`` become a
    :class:`~._formats.DualLinear` over ``switch`` (a new one by default, reachable as
    ``model.precision_switch``), keeping their fp32 copy for sensitive steps. Returns how
    many modules run in each format. Tied weights (an LM head sharing the embedding's) are
    untied by converting only one of them.

    Raises
    ------
    PrecisionMapError
        The map was built for another kind of device than the one ``model`` is on, or names a
        module the model does not have, or a format it cannot take.
    """
    from coreason_runtime._exceptions import PrecisionError
    from coreason_runtime.models._formats import DualLinear, PrecisionSwitch, convert

    check_device(pmap, model)
    switch = switch or PrecisionSwitch()
    names = dict(model.named_modules())
    for name, fmt in sorted(pmap.modules.items()):
        if name not in names:
            msg = f"the precision map names {name!r}, which {type(model).__name__} does not have"
            raise PrecisionMapError(msg)
        try:
            low = convert(names[name], fmt)
        except PrecisionError as e:
            msg = f"the precision map cannot convert {name}: {e}"
            raise PrecisionMapError(msg) from e
        parent, attr = _parent(model, name)
        dual = token_groups and name in pmap.sensitive
        new = DualLinear(low, names[name], switch) if dual else low
        setattr(parent, attr, new)
    model.precision_switch = switch if token_groups and pmap.sensitive else None
    model.precision_map = pmap
    return pmap.counts()


def check_device(pmap: PrecisionMap, model: Any) -> None:
    """Refuse ``pmap`` unless it was built for the kind of device ``model`` is on.

    Raises
    ------
    PrecisionMapError
        A CPU map on a CUDA model or the other way round: formats, costs and validation differ.
    """
    from coreason_runtime.models._formats import device_kind
    from coreason_runtime.models._probe import device_of

    _same_device(pmap, device_kind(device_of(model)))


def _same_device(pmap: PrecisionMap, device: str) -> None:
    if pmap.device != device:
        msg = (
            f"the precision map for {pmap.model} was built and validated on {pmap.device}; "
            f"it is not applied on {device}: build one there "
            f"(`coreason models precision build --device {device}`)"
        )
        raise PrecisionMapError(msg)


def resolve_map(
    precision: str | PrecisionMap | None,
    folder: Path | None,
    revision: str,
    device: str = "cpu",
) -> PrecisionMap | None:
    """The map ``load_model`` applies on a ``device`` kind: ``"auto"`` (the one beside the
    model for that kind of device, if it was validated for these weights under this torch),
    ``"fp32"``/``None`` (none), a path, or a map.

    ``$COREASON_PRECISION`` replaces ``"auto"`` when set (``fp32`` turns maps off).

    Raises
    ------
    PrecisionBudgetError
        The map breaks its budget (or was never validated): it is refused, never applied.
    PrecisionMapError
        The map was built for another kind of device; or an explicitly named map is for other
        weights, or unreadable.
    """
    import torch

    explicit = precision != "auto"
    if precision == "auto":
        precision = os.environ.get("COREASON_PRECISION", "auto") or "auto"
        explicit = precision != "auto"
    if precision is None or precision in ("fp32", "off", "none"):
        return None
    if isinstance(precision, PrecisionMap):
        pmap: PrecisionMap | None = precision
    elif precision == "auto":
        pmap = read_map(folder, device) if folder is not None else None
    else:
        pmap = read_map(Path(precision), device)
        if pmap is None:
            msg = f"no precision map at {precision}"
            raise PrecisionMapError(msg)
    if pmap is None:
        return None
    _same_device(pmap, device)  # never a CPU map on a GPU or the other way round
    pmap.check()  # a map over its budget is refused, wherever it came from
    stale = pmap.revision != revision or (
        pmap.validation is not None and pmap.validation.torch != torch.__version__
    )
    if stale and explicit:
        msg = (
            f"the precision map was validated for revision {pmap.revision} under torch "
            f"{pmap.validation.torch if pmap.validation else '?'}; these weights are {revision} "
            f"under torch {torch.__version__}: rebuild it (`coreason models precision build`)"
        )
        raise PrecisionMapError(msg)
    if stale:  # an old map beside re-converted weights: never applied unvalidated
        logger.warning(
            "precision map in %s is stale (other weights or torch); loading fp32", folder
        )
        return None
    return pmap
