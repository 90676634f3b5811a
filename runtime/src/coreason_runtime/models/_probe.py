"""Sensitivity probes: what each module costs in quality, and saves in time, in each format.

For every module (q/k/v/o projections, MLP gate/up/down, embeddings, LM head, norms) of every
layer and every candidate format, :func:`probe_model` drops that module alone to the format
and measures, on the shipped calibration chats, the mean next-token KL divergence from fp32
and the change in loss. Layers before the module are not recomputed: the probe replays the
decoder from the module's layer, on the hidden states fp32 produced there.

:func:`module_costs` times each group of modules (one role across all layers) in each format
the way a decode step calls them (one token, every layer in turn, weights cold in cache), so
a map is chosen on what the formats really cost on this device. The formats probed by default
are the ones offered on the model's device (:func:`~._formats.candidates`): bf16, int8 and
int4 on the CPU; bf16, fp16 and fp8 on CUDA.

:func:`step_entropy` is the cheap run-time probe: the entropy of a step's distribution, which
the decode loop can read at every token to decide whether a step is sensitive.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import PrecisionError
from coreason_runtime.models._calibration import CALIBRATION, Chat
from coreason_runtime.models._gate import decoder_layers

if TYPE_CHECKING:
    import torch

__all__ = [
    "ProbeRow",
    "ProbeTable",
    "chat_ids",
    "device_of",
    "group_of",
    "module_costs",
    "probe_model",
    "step_entropy",
    "targets",
]

_LAYER = re.compile(r"\.(\d+)\.")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProbeRow:
    """One module in one format: its KL from fp32 and change in loss (nats per token)."""

    name: str
    group: str
    layer: int | None
    fmt: str
    kl: float
    dloss: float


@dataclass
class ProbeTable:
    """Every probe of one model: per-module quality, per-group cost (µs per decode token),
    on one kind of device (``cpu`` or ``cuda``: costs and formats differ between them)."""

    model: str
    revision: str
    tokens: int
    loss_fp32: float
    rows: list[ProbeRow] = field(default_factory=list)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"

    def kl(self, name: str, fmt: str) -> float | None:
        for r in self.rows:
            if r.name == name and r.fmt == fmt:
                return r.kl
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeTable:
        rows = [ProbeRow(**r) for r in data.pop("rows", [])]
        return cls(**data, rows=rows)


def group_of(name: str) -> str:
    """A module's role, the same in every layer: ``model.layers.*.mlp.up_proj``."""
    return _LAYER.sub(".*.", name, count=1)


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def targets(model: Any) -> list[tuple[str, tuple[str, ...]]]:
    """Every module a map can change, with the formats it can take (beyond fp32)."""
    from coreason_runtime.models._formats import formats_for

    out = []
    for name, module in model.named_modules():
        fmts = formats_for(module)
        if len(fmts) > 1 and name:
            out.append((name, fmts[1:]))
    return out


def device_of(model: Any) -> torch.device:
    """The device ``model``'s first parameter is on (where its inputs must go)."""
    import torch

    for p in model.parameters():
        return p.device  # type: ignore[no-any-return]
    return torch.device("cpu")


def chat_ids(tokenizer: Any, chats: Sequence[Chat], limit: int) -> list[int]:
    """The chats through the model's chat template, concatenated, at most ``limit`` tokens."""
    ids: list[int] = []
    for user, answer in chats:
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(msgs, tokenize=False)
        else:
            text = f"user: {user}\nassistant: {answer}\n"
        ids.extend(int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[:limit]


def step_entropy(logits: torch.Tensor) -> float:
    """Entropy (nats) of the distribution over one step's logits (-inf entries excluded)."""
    import torch

    logp = torch.log_softmax(logits.float(), -1)
    p = logp.exp()
    return float(-(p * logp.nan_to_num(neginf=0.0)).sum())


@contextmanager
def swapped(model: Any, name: str, fmt: str) -> Iterator[None]:
    """Run ``model`` with module ``name`` alone converted to ``fmt``."""
    from coreason_runtime.models._formats import convert

    owner, _, attr = name.rpartition(".")
    parent = model.get_submodule(owner) if owner else model
    original = getattr(parent, attr)
    setattr(parent, attr, convert(original, fmt))
    try:
        yield
    finally:
        setattr(parent, attr, original)


class _Replay:
    """fp32 hidden states at every decoder layer's input, and the call to replay from there."""

    def __init__(self, model: Any, ids: torch.Tensor) -> None:
        import torch

        self.model = model
        self.layers = decoder_layers(model)
        decoder = model.get_decoder()
        norm = getattr(decoder, "norm", None)
        if norm is None:
            msg = f"cannot probe {type(model).__name__}: its decoder has no final `norm`"
            raise PrecisionError(msg)
        self.norm: Any = norm
        self.ids = ids
        self.inputs: list[tuple[Any, dict[str, Any]]] = []
        hooks = [
            layer.register_forward_pre_hook(self._keep, with_kwargs=True) for layer in self.layers
        ]
        final: list[torch.Tensor] = []
        hooks.append(self.norm.register_forward_pre_hook(lambda _m, a: final.append(a[0])))
        try:
            out = model(input_ids=ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        self.final = final[0]
        self.logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
        self.targets = ids[0, 1:]
        self.loss = float(-self.logp.gather(1, self.targets[:, None]).mean())

    def _keep(self, _module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.inputs.append((args[0] if args else kwargs["hidden_states"], dict(kwargs)))

    def logits_from(self, layer: int | None, *, full: bool = False) -> torch.Tensor:
        """Logits recomputed from decoder layer ``layer`` on (None: only norm and head)."""
        if full:
            out: torch.Tensor = self.model(input_ids=self.ids, use_cache=False).logits
            return out
        if layer is None:
            hidden = self.final
        else:
            hidden = self.inputs[layer][0]
            for i in range(layer, len(self.layers)):
                kwargs = {k: v for k, v in self.inputs[i][1].items() if k != "hidden_states"}
                res = self.layers[i](hidden, **kwargs)
                hidden = res[0] if isinstance(res, tuple) else res
        logits: torch.Tensor = self.model.get_output_embeddings()(self.norm(hidden))
        return logits

    def score(self, logits: torch.Tensor) -> tuple[float, float]:
        """(mean KL from fp32, change in loss) of ``logits`` ([1, T, V])."""
        import torch

        logq = torch.log_softmax(logits[0, :-1].float(), -1)
        kl = float((self.logp.exp() * (self.logp - logq)).sum(-1).mean())
        loss = float(-logq.gather(1, self.targets[:, None]).mean())
        return max(kl, 0.0), loss - self.loss


def _start(name: str, model: Any, layer: int | None) -> tuple[int | None, bool]:
    """Where a probe of ``name`` replays from: (layer, full forward?)."""
    head = model.get_output_embeddings()
    decoder = model.get_decoder()
    module = model.get_submodule(name)
    if module is head or module is getattr(decoder, "norm", None):
        return None, False
    if layer is None:  # the embedding, or anything outside the layers: run everything
        return 0, True
    return layer, False


def probe_model(
    model: Any,
    tokenizer: Any,
    *,
    name: str = "",
    revision: str = "",
    formats: Sequence[str] | None = None,
    tokens: int = 96,
    chats: Sequence[Chat] = CALIBRATION,
    progress: Progress | None = None,
) -> ProbeTable:
    """Probe every module of ``model`` in every format of ``formats`` it can take.

    ``formats`` defaults to the candidates of the model's device (:func:`~._formats.candidates`).
    Each probe converts one module, replays the model from that module's layer on the
    calibration tokens (``tokens`` of them), and records the mean KL divergence from fp32 and
    the change in loss; then the per-group costs are timed (:func:`module_costs`).
    """
    import torch

    from coreason_runtime.models._formats import candidates

    t0 = time.perf_counter()
    device = device_of(model)
    formats = candidates(device) if formats is None else tuple(formats)
    ids = torch.tensor([chat_ids(tokenizer, chats, tokens)], device=device)
    table = ProbeTable(
        model=name, revision=revision, tokens=int(ids.shape[1]), loss_fp32=0.0, device=device.type
    )
    with torch.no_grad():
        replay = _Replay(model, ids)
        table.loss_fp32 = replay.loss
        todo = [(n, f) for n, fmts in targets(model) for f in fmts if f in formats]
        for i, (mname, fmt) in enumerate(todo):
            layer = layer_of(mname)
            start, full = _start(mname, model, layer)
            with swapped(model, mname, fmt):
                kl, dloss = replay.score(replay.logits_from(start, full=full))
            table.rows.append(ProbeRow(mname, group_of(mname), layer, fmt, kl, dloss))
            if progress is not None and (i % 50 == 0 or i == len(todo) - 1):
                progress(f"probe {i + 1}/{len(todo)}: {mname} {fmt} KL={kl:.2e}")
        table.costs, table.bytes = module_costs(model, formats=("fp32", *formats))
    table.seconds = round(time.perf_counter() - t0, 1)
    return table


def module_costs(
    model: Any, *, formats: Sequence[str] | None = None, reps: int = 5
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Per group and format: µs per decode token (all of the group's modules, one token each,
    in layer order; the fastest of ``reps`` passes) and bytes of weights.

    ``formats`` defaults to fp32 and the candidates of the model's device; on CUDA each pass
    is timed to the end of its kernels (``torch.cuda.synchronize``).
    """
    import torch

    from coreason_runtime.models._formats import candidates, convert, formats_for, module_bytes

    device = device_of(model)
    formats = ("fp32", *candidates(device)) if formats is None else tuple(formats)

    def sync() -> None:  # a CUDA kernel returns before it has run
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    groups: dict[str, list[Any]] = {}
    for name, module in model.named_modules():
        if name and len(formats_for(module)) > 1:
            groups.setdefault(group_of(name), []).append(module)
    costs: dict[str, dict[str, float]] = {}
    sizes: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for group, modules in groups.items():
            costs[group], sizes[group] = {}, {}
            for fmt in formats:
                if fmt not in formats_for(modules[0]):
                    continue
                converted = [convert(m, fmt) for m in modules]
                x = _example_input(modules[0])
                best = float("inf")
                for _ in range(reps):
                    sync()
                    t = time.perf_counter()
                    for m in converted:
                        m(x)
                    sync()
                    best = min(best, time.perf_counter() - t)
                costs[group][fmt] = round(1e6 * best, 2)
                sizes[group][fmt] = sum(module_bytes(m) for m in converted)
    return costs, sizes


def _example_input(module: Any) -> torch.Tensor:
    import torch

    device = device_of(module)
    if isinstance(module, torch.nn.Embedding):
        return torch.tensor([[1]], device=device)
    if isinstance(module, torch.nn.Linear):
        return torch.randn(1, 1, module.in_features, device=device)
    return torch.randn(1, 1, module.weight.shape[0], device=device)
