"""Per-operator precision on each kind of device: the fp16 and fp8 formats, the formats each
device is offered, and maps that are refused on the other kind of device (CUDA tests run
only where CUDA is)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from coreason_runtime import PrecisionError, PrecisionMapError
from coreason_runtime.models import (
    LoadedModel,
    PrecisionMap,
    QualityBudget,
    apply_map,
    build_precision_map,
    load_model,
    probe_model,
    read_map,
    tiny_llama,
    write_map,
)
from coreason_runtime.models._formats import (
    candidates,
    convert,
    device_kind,
    format_of,
    formats_for,
    module_bytes,
    per_call_scaled,
)
from coreason_runtime.models._formats_gpu import FP8_MAX, Fp8Linear, fp8_kernel
from coreason_runtime.models._mapping import greedy_tokens, validate
from coreason_runtime.models._precision import resolve_map
from coreason_runtime.models._precision_cli import cmd_precision

CUDA = torch.cuda.is_available()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _linear(n_in: int = 128, n_out: int = 96) -> tuple[torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(n_in, n_out), torch.randn(3, 5, n_in)


# --- the formats, on the CPU -----------------------------------------------------------------


def test_fp16_linear_stores_half_weights_and_matches_fp32() -> None:
    lin, x = _linear()
    fp16 = convert(lin, "fp16")
    assert format_of(fp16) == "fp16" and fp16.weight.dtype == torch.float16
    assert module_bytes(fp16) == 2 * (128 * 96 + 96)
    with torch.no_grad():
        got, ref = fp16(x), lin(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert _rel_err(got, ref) < 2e-3


@pytest.mark.parametrize("kernel", ["dequant", "scaled_mm"])
def test_fp8_linear_stores_e4m3_weights_and_matches_fp32(kernel: str) -> None:
    lin, x = _linear()
    fp8 = Fp8Linear(lin, kernel=kernel)  # torch runs _scaled_mm on the CPU too
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.scale.shape == (96,)
    assert module_bytes(fp8) == 128 * 96 + 4 * 96 + 4 * 96  # weights, scales, fp32 bias
    with torch.no_grad():
        got, ref = fp8(x), lin(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert 1e-3 < _rel_err(got, ref) < 0.05  # e4m3 keeps 3 mantissa bits: close, not equal


def test_fp8_scales_map_each_rows_largest_weight_to_the_format_maximum() -> None:
    lin, _ = _linear()
    fp8 = Fp8Linear(lin)
    w = lin.weight.detach()
    assert float(fp8.weight.float().abs().amax()) == FP8_MAX
    back = (fp8.weight.float() * fp8.scale[:, None]).abs().amax(1)
    torch.testing.assert_close(back, w.abs().amax(1))


def test_fp8_scaled_rows_do_not_depend_on_the_rows_batched_with_them() -> None:
    lin, x = _linear()
    fp8 = Fp8Linear(lin, kernel="scaled_mm")
    rows = x.reshape(-1, 128)
    loud = rows.clone()
    loud[1:] *= 100  # a per-tensor activation scale would crush row 0
    with torch.no_grad():
        assert torch.equal(fp8(rows)[0], fp8(loud)[0])
    assert not per_call_scaled(fp8)


def test_the_fp8_kernel_is_scaled_mm_only_on_a_recent_gpu() -> None:
    assert fp8_kernel(torch.device("cpu"), 128, 96) == "dequant"
    assert Fp8Linear(_linear()[0]).kernel == "dequant"
    assert fp8_kernel(torch.device("cuda"), 100, 96) == "dequant"  # not a multiple of 16


# --- which formats each device takes and is offered ----------------------------------------


def test_each_device_is_offered_the_formats_fast_there() -> None:
    assert candidates("cpu") == ("bf16", "int8", "int4")
    assert candidates("cuda:1") == ("bf16", "fp16", "fp8")
    assert device_kind(torch.device("cuda", 0)) == "cuda"
    with pytest.raises(PrecisionError, match="mps"):
        device_kind("mps")


def test_cpu_only_kernels_are_not_formats_off_the_cpu() -> None:
    assert formats_for(torch.nn.Linear(32, 32)) == ("fp32", "bf16", "int8", "int4", "fp16", "fp8")
    elsewhere = torch.nn.Linear(32, 32, device="meta")  # any non-CPU device, no GPU needed
    assert formats_for(elsewhere) == ("fp32", "bf16", "fp16", "fp8")
    with pytest.raises(PrecisionError, match="int8"):
        convert(elsewhere, "int8")


def test_a_cpu_probe_tries_only_the_cpu_candidates(tiny_model: LoadedModel) -> None:
    table = probe_model(tiny_model.model, tiny_model.tokenizer, tokens=24)
    assert table.device == "cpu"
    assert {r.fmt for r in table.rows} == set(candidates("cpu"))
    assert set(table.costs["lm_head"]) == {"fp32", *candidates("cpu")}


def test_fp16_and_fp8_can_be_probed_and_mapped_on_the_cpu(tiny_model: LoadedModel) -> None:
    model, tok = tiny_model.model, tiny_model.tokenizer
    table = probe_model(model, tok, formats=("fp16", "fp8"), tokens=32)
    down = "model.layers.*.mlp.down_proj"
    sizes = table.bytes[down]
    assert sizes["fp8"] < sizes["fp16"] < sizes["fp32"]  # the cost model sees the bytes
    kls = {f: sum(r.kl for r in table.rows if r.fmt == f) for f in ("fp16", "fp8")}
    assert kls["fp16"] < kls["fp8"]
    # costs as a GPU times them (fewer bytes, less time); the CPU's own timings rarely favour
    # these formats, which is why the CPU is not offered them
    gpu_like = {
        g: {**c, "fp16": c["fp32"] / 2, "fp8": c["fp32"] / 4} for g, c in table.costs.items()
    }
    table = dataclasses.replace(table, costs=gpu_like)
    pmap, _ = build_precision_map(
        model, tok, name="tiny", revision="r0", budget=QualityBudget(0.05), table=table
    )
    assert pmap.device == "cpu" and pmap.valid and pmap.modules
    assert set(pmap.modules.values()) <= {"fp16", "fp8"}
    assert pmap.cost_us < pmap.cost_us_fp32


def test_a_probe_table_from_another_device_is_refused(tiny_model: LoadedModel) -> None:
    table = probe_model(tiny_model.model, tiny_model.tokenizer, formats=("bf16",), tokens=16)
    elsewhere = dataclasses.replace(table, device="cuda")
    with pytest.raises(PrecisionError, match="measured on cuda"):
        build_precision_map(
            tiny_model.model, tiny_model.tokenizer, name="t", revision="r0", table=elsewhere
        )


# --- maps carry their device -------------------------------------------------------------------


def _validated(tiny_model: LoadedModel, modules: dict[str, str], device: str) -> PrecisionMap:
    model = copy.deepcopy(tiny_model.model)
    apply_map(model, PrecisionMap("tiny", "r0", modules))
    v = validate(model, tiny_model.model, tiny_model.tokenizer, greedy_tokens_n=4, tokens=64)
    return PrecisionMap("tiny", "r0", modules, QualityBudget(0.05), v, device=device)


def test_maps_for_each_device_live_side_by_side(tmp_path: Path, tiny_model: LoadedModel) -> None:
    cpu = _validated(tiny_model, {"lm_head": "int8"}, "cpu")
    gpu = dataclasses.replace(cpu, modules={"lm_head": "fp8"}, device="cuda")
    assert write_map(cpu, tmp_path).name == "precision.json"
    assert write_map(gpu, tmp_path).name == "precision-cuda.json"
    assert read_map(tmp_path) == cpu and read_map(tmp_path, "cuda") == gpu
    assert resolve_map("auto", tmp_path, "r0", "cuda") == gpu
    legacy = json.loads((tmp_path / "precision.json").read_text())
    del legacy["device"]  # maps written before devices were CPU maps
    assert PrecisionMap.from_json(legacy) == cpu


def test_a_map_for_another_device_is_never_applied(tmp_path: Path, tiny_model: LoadedModel) -> None:
    gpu = _validated(tiny_model, {"lm_head": "fp16"}, "cuda")
    with pytest.raises(PrecisionMapError, match="built and validated on cuda"):
        apply_map(copy.deepcopy(tiny_model.model), gpu)
    with pytest.raises(PrecisionMapError, match="not applied on cpu"):
        resolve_map(gpu, None, "r0", "cpu")
    misfiled = tmp_path / "precision.json"  # a CUDA map where the CPU map belongs
    write_map(gpu, tmp_path, misfiled.name)
    with pytest.raises(PrecisionMapError):
        resolve_map("auto", tmp_path, "r0", "cpu")


def test_load_model_refuses_a_cuda_map_on_the_cpu_and_the_cli_shows_per_device(
    tmp_path: Path, tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COREASON_PRECISION", raising=False)
    folder = tmp_path / "tiny"
    tiny_model.model.save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    from coreason_runtime.models._loader import _revision

    gpu = dataclasses.replace(
        _validated(tiny_model, {"lm_head": "fp16"}, "cuda"), revision=_revision(folder)
    )
    path = write_map(gpu, folder)
    cache = tmp_path / "cache"
    plain = load_model(str(folder), cache_dir=cache, device="cpu")  # auto: no CPU map here
    assert plain.precision is None
    with pytest.raises(PrecisionMapError, match="cuda"):
        load_model(str(folder), cache_dir=cache, device="cpu", precision=str(path))
    args = argparse.Namespace(action="show", name=str(folder), cache_dir=None, json=False)
    for device, expected in (("cpu", "no precision map for cpu"), ("cuda", "a map for cuda")):
        out = io.StringIO()
        args.device = device
        assert cmd_precision(args, out=out) == 0
        assert expected in out.getvalue()
    args.device = "mps"
    assert cmd_precision(args, out=io.StringIO()) == 1  # a typed error, said on stderr
    args.action, args.device = "off", "cpu"
    assert cmd_precision(args, out=io.StringIO()) == 0
    assert read_map(folder, "cuda") == gpu  # off for the CPU leaves the CUDA map


def test_the_precision_command_takes_a_device() -> None:
    from coreason_runtime.models._precision_cli import add_precision_arguments

    parser = argparse.ArgumentParser()
    add_precision_arguments(parser.add_subparsers())
    args = parser.parse_args(["precision", "build", "--device", "cuda"])
    assert (args.action, args.device) == ("build", "cuda")
    assert parser.parse_args(["precision"]).device is None  # the device models load on


# --- on a CUDA device ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_model(model_tokenizer: Any) -> LoadedModel:
    return tiny_llama(model_tokenizer, seed=0, device="cuda:0")


def _linears(model: Any) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(("fmt", "least_agreement"), [("fp16", 1.0), ("fp8", 0.75)])
def test_a_uniform_gpu_map_decodes_greedy_tokens_like_fp32(
    cuda_model: LoadedModel, fmt: str, least_agreement: float
) -> None:
    ref, tok = cuda_model.model, cuda_model.tokenizer
    model = copy.deepcopy(ref)
    pmap = PrecisionMap("tiny", "r0", dict.fromkeys(_linears(ref), fmt), device="cuda")
    assert apply_map(model, pmap) == {fmt: len(_linears(ref))}
    head = model.get_submodule("lm_head")
    assert head.weight.device.type == "cuda"
    if fmt == "fp8" and torch.cuda.get_device_capability() >= (8, 9):
        assert head.kernel == "scaled_mm"
    if fmt == "fp16":  # as exact as on the CPU, where every prompt decodes the same
        prompt = "Name three primary colours."
        assert greedy_tokens(model, tok, prompt, 16) == greedy_tokens(ref, tok, prompt, 16)
    v = validate(model, ref, tok, greedy_tokens_n=16, tokens=128)
    assert v.greedy_match >= least_agreement and v.ppl_increase < 0.01


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_map_built_on_cuda_uses_the_gpu_formats_and_applies_there(
    cuda_model: LoadedModel,
) -> None:
    pmap, table = build_precision_map(
        cuda_model.model,
        cuda_model.tokenizer,
        name="tiny",
        revision="r0",
        budget=QualityBudget(0.05),
    )
    assert table.device == "cuda" and {r.fmt for r in table.rows} == set(candidates("cuda"))
    assert pmap.device == "cuda" and pmap.valid
    assert set(pmap.modules.values()) <= set(candidates("cuda"))
    model = copy.deepcopy(cuda_model.model)
    apply_map(model, pmap)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]], device="cuda:0")).logits
    assert torch.isfinite(logits).all()
    cpu_map = dataclasses.replace(pmap, modules={"lm_head": "int8"}, device="cpu")
    with pytest.raises(PrecisionMapError, match="not applied on cuda"):
        apply_map(copy.deepcopy(cuda_model.model), cpu_map)
    with pytest.raises(PrecisionError):
        convert(cuda_model.model.get_submodule("lm_head"), "int4")
