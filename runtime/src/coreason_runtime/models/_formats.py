"""Number formats a module can run in, as drop-in replacements for its modules.

Decoding a small model reads every weight once per token, so a token costs about what its
weights weigh: a format that stores fewer bytes and has a fast kernel on the device decodes
faster. The formats are the ones torch 2.13 runs without extra packages:

========  ===========================================================  ==============  =====
format    kernel                                                       bytes / weight  fast
========  ===========================================================  ==============  =====
fp32      the module as loaded                                         4               both
bf16      ``F.linear`` in bfloat16 (AVX512-BF16 where the CPU has it)  2               both
int8      fbgemm dynamic quantisation: int8 weights per output row,    1 (+ 8 / row)   CPU
          activations quantised per call, int32 accumulation
int4      weight-only, groups of 32 (asymmetric), bf16 activations     0.5 (+ scales)  CPU
          (``_weight_int4pack_mm_for_cpu``)
fp16      ``F.linear`` in float16 (:mod:`._formats_gpu`)               2               CUDA
fp8       e4m3 weights, a scale per output row; ``F.scaled_mm``        1 (+ 4 / row)   CUDA
          with per-row activation scales on compute capability >= 8.9,
          else cast to fp16/bf16 (:mod:`._formats_gpu`)
========  ===========================================================  ==============  =====

int8 and int4 linear layers run only on the CPU (their kernels are CPU kernels); the others
run anywhere. What a device is *offered* (:func:`candidates`) is what is fast there: on the
CPU bf16, int8 and int4; on CUDA bf16, fp16 and fp8. (On the development CPU fp16 timed
faster than bf16 but slower than int8, and fp8, cast up on every call, far slower than fp32;
see :mod:`._formats_gpu`.) Linear layers take every format;
embeddings take fp32, bf16 or int8 (per-row scales); norms fp32 or bf16. torchao's CPU paths
call these same aten kernels, so it is not a dependency.

A :class:`DualLinear` keeps a low-precision and a full-precision copy of one layer and runs
the one its :class:`PrecisionSwitch` selects: the per-token-group mode, where sensitive steps
run sensitive layers at full precision.
"""

from __future__ import annotations

import copy
import threading
import warnings

import torch
from torch import nn

from coreason_runtime._exceptions import PrecisionError
from coreason_runtime.models._formats_gpu import Fp8Linear, Fp16Linear

__all__ = [
    "CANDIDATES",
    "FORMATS",
    "DualLinear",
    "PrecisionSwitch",
    "candidates",
    "convert",
    "device_kind",
    "format_of",
    "formats_for",
    "kind_of",
    "module_bytes",
    "per_call_scaled",
]

FORMATS = ("fp32", "bf16", "int8", "int4", "fp16", "fp8")
# the formats worth probing on each kind of device (fp32 is always there)
CANDIDATES: dict[str, tuple[str, ...]] = {
    "cpu": ("bf16", "int8", "int4"),
    "cuda": ("bf16", "fp16", "fp8"),
}
INT4_GROUP = 32


class PrecisionSwitch:
    """Which copy the :class:`DualLinear` layers of one model run: per thread, low by default."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def high(self) -> bool:
        return bool(getattr(self._local, "high", False))

    @high.setter
    def high(self, value: bool) -> None:
        self._local.high = value


class Bf16Linear(nn.Module):
    """A linear layer stored and computed in bfloat16; input and output stay float32."""

    fmt = "bf16"

    def __init__(self, src: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = src.in_features, src.out_features
        self.weight = nn.Parameter(src.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = (
            None
            if src.bias is None
            else nn.Parameter(src.bias.detach().to(torch.bfloat16), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias)
        return out.to(x.dtype)


class Int8Linear(nn.Module):
    """fbgemm dynamic int8: per-row int8 weights, activations quantised at each call."""

    fmt = "int8"

    def __init__(self, src: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = src.in_features, src.out_features
        w = src.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        bias = None if src.bias is None else src.bias.detach().float()
        with warnings.catch_warnings():
            # creating quantised tensors is deprecated in torch 2.13; what runs is the packed
            # fbgemm weight made from one, and torch is pinned (constraints.txt)
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        self.nbytes = w.numel() + 8 * w.shape[0] + (0 if bias is None else 4 * bias.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(
            x.reshape(-1, shape[-1]).float(), self._packed, False
        )
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int4Linear(nn.Module):
    """int4 weight-only in groups of :data:`INT4_GROUP`, computed with bf16 activations."""

    fmt = "int4"
    packed: torch.Tensor
    scales_zeros: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, src: nn.Linear) -> None:
        super().__init__()
        n, k = src.out_features, src.in_features
        if k % INT4_GROUP:
            msg = f"int4 needs in_features divisible by {INT4_GROUP}, not {k}"
            raise PrecisionError(msg)
        self.in_features, self.out_features = k, n
        w = src.weight.detach().float().reshape(n, k // INT4_GROUP, INT4_GROUP)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        q = ((w - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        zero = lo + 8 * scale  # the kernel dequantises (q - 8) * scale + zero
        sz = torch.stack([scale.reshape(n, -1).t(), zero.reshape(n, -1).t()], -1)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if src.bias is None else src.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, shape[-1]).to(torch.bfloat16), self.packed, INT4_GROUP, self.scales_zeros
        ).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


class Bf16Embedding(nn.Module):
    """An embedding table stored in bfloat16; looked-up rows come back as float32."""

    fmt = "bf16"

    def __init__(self, src: nn.Embedding) -> None:
        super().__init__()
        self.weight = nn.Parameter(src.weight.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight).float()


class Int8Embedding(nn.Module):
    """An embedding table in int8 with one scale per row."""

    fmt = "int8"

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, src: nn.Embedding) -> None:
        super().__init__()
        w = src.weight.detach().float()
        scale = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
        self.register_buffer("qweight", (w / scale).round().to(torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.qweight).float()
        return rows * nn.functional.embedding(ids, self.scale)


class Bf16Norm(nn.Module):
    """A norm layer run in bfloat16 (its weight and its input); output back in float32."""

    fmt = "bf16"

    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(src).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x.to(torch.bfloat16))
        return out.to(x.dtype)


class DualLinear(nn.Module):
    """Runs ``high`` while ``switch.high`` is set on the calling thread, else ``low``."""

    def __init__(self, low: nn.Module, high: nn.Module, switch: PrecisionSwitch) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.switch = switch
        self.fmt = format_of(low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (self.high if self.switch.high else self.low)(x)
        return out


def per_call_scaled(module: nn.Module) -> bool:
    """Whether ``module`` quantises its input with one scale per call (fbgemm dynamic int8),
    so a row's output depends on the other rows computed with it."""
    if isinstance(module, DualLinear):
        return not module.switch.high and isinstance(module.low, Int8Linear)
    return isinstance(module, Int8Linear)


_CLASSES: dict[tuple[str, str], type[nn.Module]] = {
    ("linear", "bf16"): Bf16Linear,
    ("linear", "int8"): Int8Linear,
    ("linear", "int4"): Int4Linear,
    ("linear", "fp16"): Fp16Linear,
    ("linear", "fp8"): Fp8Linear,
    ("embedding", "bf16"): Bf16Embedding,
    ("embedding", "int8"): Int8Embedding,
    ("norm", "bf16"): Bf16Norm,
}


# formats whose kernels exist only on some kinds of device (the rest run anywhere)
_ONLY_ON: dict[tuple[str, str], str] = {("linear", "int8"): "cpu", ("linear", "int4"): "cpu"}


def device_kind(device: str | torch.device) -> str:
    """``"cpu"`` or ``"cuda"``: the kind of device a map is built for (``cuda:1`` is cuda).

    Raises
    ------
    PrecisionError
        No precision formats are defined for that kind of device.
    """
    kind = torch.device(device).type
    if kind not in CANDIDATES:
        msg = f"precision maps exist for {sorted(CANDIDATES)} devices, not {kind!r}"
        raise PrecisionError(msg)
    return kind


def candidates(device: str | torch.device) -> tuple[str, ...]:
    """The formats offered (probed, solved over) on ``device``: those fast there."""
    return CANDIDATES[device_kind(device)]


def _device_of(module: nn.Module) -> str:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device.type
    return "cpu"


def kind_of(module: nn.Module) -> str:
    """``linear``, ``embedding``, ``norm`` or ``other``: which formats a module can take."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    weight = getattr(module, "weight", None)
    if "Norm" in type(module).__name__ and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return "norm"
    return "other"


def formats_for(module: nn.Module) -> tuple[str, ...]:
    """The formats an fp32 ``module`` can be converted to on its device (``fp32`` first)."""
    kind, where = kind_of(module), _device_of(module)
    return (
        "fp32",
        *(f for (k, f) in _CLASSES if k == kind and _ONLY_ON.get((k, f), where) == where),
    )


def format_of(module: nn.Module) -> str:
    """The format a (possibly converted) module runs in."""
    return str(getattr(module, "fmt", "fp32"))


def convert(module: nn.Module, fmt: str) -> nn.Module:
    """A new module computing what the fp32 ``module`` computes, in format ``fmt``.

    ``module`` is left as it was (``fp32`` returns it as is).

    Raises
    ------
    PrecisionError
        ``module`` cannot take ``fmt`` (on the device it is on).
    """
    if fmt == "fp32":
        return module
    cls = _CLASSES.get((kind_of(module), fmt))
    if cls is None or fmt not in formats_for(module):
        msg = (
            f"a {type(module).__name__} on {_device_of(module)} cannot run in {fmt!r} "
            f"(it takes {formats_for(module)})"
        )
        raise PrecisionError(msg)
    with torch.no_grad():
        return cls(module)


def module_bytes(module: nn.Module) -> int:
    """Bytes the module's own weights take (parameters and buffers, packed weights included)."""
    packed = getattr(module, "nbytes", None)
    if isinstance(packed, int):
        return packed
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
