"""Per-operator precision: formats, probes, the map solver, validation, refusal, load, CLI."""

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
from coreason_runtime import PrecisionBudgetError, PrecisionMapError
from coreason_runtime.models import (
    LoadedModel,
    PrecisionMap,
    QualityBudget,
    apply_map,
    build_precision_map,
    load_model,
    probe_model,
    read_map,
    solve,
    write_map,
)
from coreason_runtime.models._formats import PrecisionSwitch, convert, format_of
from coreason_runtime.models._precision import resolve_map
from coreason_runtime.models._precision_cli import cmd_precision
from coreason_runtime.models._probe import targets


@pytest.fixture(scope="module")
def table(tiny_model: LoadedModel) -> Any:
    return probe_model(
        tiny_model.model, tiny_model.tokenizer, name="tiny", revision="r0", tokens=48
    )


@pytest.fixture(scope="module")
def built(tiny_model: LoadedModel, table: Any) -> PrecisionMap:
    pmap, _ = build_precision_map(
        tiny_model.model,
        tiny_model.tokenizer,
        name="tiny",
        revision="r0",
        budget=QualityBudget(ppl_increase=0.05),
        table=table,
    )
    return pmap


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("fmt", "tol"), [("bf16", 0.01), ("int8", 0.05), ("int4", 0.2)])
def test_each_linear_format_computes_the_same_product(fmt: str, tol: float) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 96)
    x = torch.randn(3, 5, 128)
    with torch.no_grad():
        got, ref = convert(lin, fmt)(x), lin(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert _rel_err(got, ref) < tol
    assert format_of(convert(lin, fmt)) == fmt


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_embedding_formats_look_up_the_same_rows(fmt: str) -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 32)
    ids = torch.tensor([[1, 7, 49]])
    with torch.no_grad():
        assert _rel_err(convert(emb, fmt)(ids), emb(ids)) < 0.01


def test_a_format_a_module_cannot_take_is_refused() -> None:
    from coreason_runtime import PrecisionError

    with pytest.raises(PrecisionError):
        convert(torch.nn.Embedding(4, 4), "int4")


def test_dual_linear_runs_full_precision_only_while_switched(tiny_model: LoadedModel) -> None:
    lin = torch.nn.Linear(64, 32)
    switch = PrecisionSwitch()
    from coreason_runtime.models._formats import DualLinear

    dual = DualLinear(convert(lin, "int4"), lin, switch)
    x = torch.randn(1, 64)
    with torch.no_grad():
        low = dual(x)
        switch.high = True
        high = dual(x)
    assert torch.equal(high, lin(x).detach())
    assert not torch.equal(low, high)


def test_probe_covers_every_module_and_format(table: Any, tiny_model: LoadedModel) -> None:
    expected = {
        (name, fmt)
        for name, fmts in targets(tiny_model.model)
        for fmt in fmts
        if fmt in ("bf16", "int8", "int4")
    }
    assert {(r.name, r.fmt) for r in table.rows} == expected
    assert all(r.kl >= 0 for r in table.rows)
    groups = {r.group for r in table.rows}
    assert "model.layers.*.mlp.down_proj" in groups and "lm_head" in groups
    assert all("fp32" in table.costs[g] for g in groups)


def test_probe_leaves_the_model_as_it_was(table: Any, tiny_model: LoadedModel) -> None:
    assert {format_of(m) for m in tiny_model.model.modules()} == {"fp32"}


def test_lower_precision_costs_more_kl_on_the_whole(table: Any) -> None:
    mean = {
        fmt: sum(r.kl for r in table.rows if r.fmt == fmt)
        / max(1, sum(1 for r in table.rows if r.fmt == fmt))
        for fmt in ("bf16", "int8", "int4")
    }
    assert mean["bf16"] < mean["int8"] < mean["int4"]


def test_solver_spends_the_allowance_and_no_more(table: Any) -> None:
    free, cost0, kl0 = solve(table, 0.0)
    assert kl0 == 0.0 and all(table.kl(n, f) == 0.0 for n, f in free.items())
    some, cost1, kl1 = solve(table, 1e-3)
    assert kl1 <= 1e-3
    everything, cost2, _ = solve(table, 1e9)
    assert cost2 <= cost1 <= cost0
    assert len(everything) >= len(some)


def test_built_map_is_validated_within_its_budget(built: PrecisionMap) -> None:
    pmap = built
    assert pmap.valid and pmap.modules
    assert pmap.validation is not None and pmap.validation.ppl_increase <= 0.05
    pmap.check()


def test_a_map_over_its_budget_is_refused(built: PrecisionMap, table: Any) -> None:
    everything, _, _ = solve(table, 1e9)
    pmap = built
    strict = dataclasses.replace(pmap, modules=everything, budget=QualityBudget(ppl_increase=-1.0))
    with pytest.raises(PrecisionBudgetError) as info:
        strict.check()
    assert info.value.budget["ppl_increase"] == -1.0
    unvalidated = dataclasses.replace(pmap, validation=None)
    with pytest.raises(PrecisionBudgetError):
        resolve_map(unvalidated, None, "r0")


def test_apply_converts_named_modules_and_keeps_sensitive_copies(tiny_model: LoadedModel) -> None:
    model = copy.deepcopy(tiny_model.model)
    q = "model.layers.0.self_attn.q_proj"
    pmap = PrecisionMap(
        "tiny", "r0", {q: "int8", "lm_head": "int4", "model.norm": "bf16"}, sensitive=(q,)
    )
    counts = apply_map(model, pmap, token_groups=True)
    assert counts == {"bf16": 1, "int4": 1, "int8": 1}
    assert format_of(model.get_submodule("lm_head")) == "int4"
    assert type(model.get_submodule(q)).__name__ == "DualLinear"
    # the embedding kept its fp32 table although the head it was tied to changed
    assert model.get_input_embeddings().weight.dtype == torch.float32
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(out).all()


def test_a_map_naming_a_missing_module_is_a_typed_error(tiny_model: LoadedModel) -> None:
    model = copy.deepcopy(tiny_model.model)
    with pytest.raises(PrecisionMapError):
        apply_map(model, PrecisionMap("tiny", "r0", {"model.nowhere": "int8"}))


def test_map_file_round_trips_and_stale_maps_are_not_applied(
    tmp_path: Path, built: PrecisionMap
) -> None:
    pmap = built
    write_map(pmap, tmp_path)
    back = read_map(tmp_path)
    assert back == pmap
    assert resolve_map("auto", tmp_path, "r0") == pmap
    assert resolve_map("auto", tmp_path, "other-weights") is None  # stale: fp32
    with pytest.raises(PrecisionMapError):
        resolve_map(str(tmp_path), None, "other-weights")
    (tmp_path / "precision.json").write_text("{not json")
    with pytest.raises(PrecisionMapError):
        read_map(tmp_path)


def test_load_model_applies_the_map_beside_the_model(
    tmp_path: Path, tiny_model: LoadedModel, built: PrecisionMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COREASON_PRECISION", raising=False)
    folder = tmp_path / "tiny"
    tiny_model.model.save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    from coreason_runtime.models._loader import _revision

    pmap = dataclasses.replace(built, revision=_revision(folder))
    write_map(pmap, folder)
    loaded = load_model(str(folder), cache_dir=tmp_path / "cache")
    assert loaded.precision == pmap
    name, fmt = next(iter(pmap.modules.items()))
    assert format_of(loaded.model.get_submodule(name)) == fmt
    plain = load_model(str(folder), cache_dir=tmp_path / "cache", precision="fp32")
    assert plain.precision is None and plain is not loaded
    out = io.StringIO()
    args = argparse.Namespace(
        action="show", name=str(folder), cache_dir=None, json=False, device="cpu"
    )
    assert cmd_precision(args, out=out) == 0
    assert "within budget" in out.getvalue() and fmt in out.getvalue()
    out = io.StringIO()
    args.json = True
    assert cmd_precision(args, out=out) == 0
    assert json.loads(out.getvalue())["map"]["modules"] == pmap.modules
