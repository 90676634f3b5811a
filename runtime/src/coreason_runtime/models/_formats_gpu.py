"""The linear formats that are fast on a CUDA GPU: fp16 and fp8 weight-only.

Both construct and run on the CPU too (so their numerics are tested anywhere), but they are
not offered there by default. Timed per decode token over SmolLM2-135M's layers on the
development CPU (one thread, one run): fp32 53.7 ms, bf16 48.0, fp16 23.8, int8 14.0, and fp8
618 ms, since the CPU has no fp8 matmul and the weight is cast up on every call.

``fp8`` stores each weight as ``float8_e4m3fn`` with one float32 scale per output channel
(the row's largest magnitude maps to 448, the format's largest value). On a CUDA device of
compute capability 8.9 or newer (Ada, Hopper) it multiplies in fp8 with
``torch.nn.functional.scaled_mm`` (torch's public front to ``torch._scaled_mm``; row-wise
recipes on both operands), the activations quantised per row (one scale per token, so a token's
output never depends on the other rows it is batched with); elsewhere, or when a dimension is
not a multiple of 16, the fp8 weight is cast to fp16 (CUDA) or bf16 (CPU), which both hold
every fp8 value exactly, and the per-channel scale is applied to the output.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FP8_MAX", "Fp8Linear", "Fp16Linear", "fp8_kernel"]

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


class Fp16Linear(nn.Module):
    """A linear layer stored and computed in float16; input and output keep their dtype."""

    fmt = "fp16"

    def __init__(self, src: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = src.in_features, src.out_features
        self.weight = nn.Parameter(src.weight.detach().to(torch.float16), requires_grad=False)
        self.bias = (
            None
            if src.bias is None
            else nn.Parameter(src.bias.detach().to(torch.float16), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x.to(torch.float16), self.weight, self.bias)
        return out.to(x.dtype)


def fp8_kernel(device: torch.device, in_features: int, out_features: int) -> str:
    """``"scaled_mm"`` where an fp8 matmul runs (CUDA, compute capability >= 8.9, both
    dimensions multiples of 16), else ``"dequant"`` (cast the weight up, then ``F.linear``)."""
    if device.type != "cuda" or in_features % 16 or out_features % 16:
        return "dequant"
    return "scaled_mm" if torch.cuda.get_device_capability(device) >= (8, 9) else "dequant"


class Fp8Linear(nn.Module):
    """fp8 (e4m3) weights with one scale per output channel; see the module docstring.

    ``kernel`` forces ``"scaled_mm"`` or ``"dequant"`` (tests run the ``scaled_mm`` path on
    the CPU, where torch also implements it); by default :func:`fp8_kernel` picks. The
    choice is made for the device the source layer is on when it is converted.
    """

    fmt = "fp8"
    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, src: nn.Linear, kernel: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = src.in_features, src.out_features
        w = src.weight.detach().float()
        scale = (w.abs().amax(1) / FP8_MAX).clamp(min=1e-12)
        q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.contiguous())  # float32, one per output row
        self.register_buffer("bias", None if src.bias is None else src.bias.detach().float())
        self.kernel = kernel or fp8_kernel(w.device, self.in_features, self.out_features)
        # bf16 on the CPU (AVX512-BF16 where present), fp16 on CUDA (more mantissa)
        self._dequant = torch.bfloat16 if w.device.type == "cpu" else torch.float16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = self._scaled(flat) if self.kernel == "scaled_mm" else self._dequantised(flat)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _dequantised(self, flat: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(self._dequant)
        out = nn.functional.linear(flat.to(self._dequant), w).float()
        return out * self.scale

    def _scaled(self, flat: torch.Tensor) -> torch.Tensor:
        xf = flat.float()
        xs = (xf.abs().amax(1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        xq = (xf / xs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        # row-wise scaling: scale_a [M, 1], scale_b [1, N], the weight column-major ([K, N]
        # as a transposed view of the row-major [N, K] buffer), bf16 out as the CUDA kernel needs
        rowwise = nn.functional.ScalingType.RowWise
        out: torch.Tensor = nn.functional.scaled_mm(
            xq,
            self.weight.t(),
            xs.contiguous(),
            rowwise,
            self.scale[None, :],
            rowwise,
            output_dtype=torch.bfloat16,
        )
        return out.float()
