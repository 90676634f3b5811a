"""The lean one-token step gives the model's own logits and KV, and steps aside for hooks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from coreason_runtime.decode import kv_max_abs_diff
from coreason_runtime.decode._kv import new_cache
from coreason_runtime.models import LayerGate, LoadedModel, PrecisionMap, apply_map
from coreason_runtime.models._fast import FastStep


def _ids(n: int) -> torch.Tensor:
    return torch.tensor([list(range(300, 300 + n))])


@torch.no_grad()
def _reference(model: Any, n: int) -> tuple[Any, torch.Tensor]:
    cache = new_cache(model.config)
    logits = model(input_ids=_ids(n), cache=cache, use_cache=True).logits[0, -1]
    return cache, logits


@pytest.mark.parametrize("mapped", [False, True])
@torch.no_grad()
def test_fast_steps_match_a_full_forward(tiny_model: LoadedModel, mapped: bool) -> None:
    model = copy.deepcopy(tiny_model.model)
    if mapped:
        apply_map(model, PrecisionMap("t", "r", {"model.layers.0.mlp.up_proj": "bf16"}))
    gate = LayerGate(model)
    assert FastStep.for_model(model) is not None
    cache = new_cache(model.config)
    gate.last_logits(_ids(5), cache)  # prefill through transformers
    calls: list[int] = []
    for i in range(5, 9):  # then one token at a time through the fast step
        with gate.checking(lambda: calls.append(1)):
            got = gate.last_logits(_ids(i + 1)[:, -1:], cache)
    ref_cache, ref = _reference(model, 9)
    assert float((got - ref).abs().max()) < 1e-4
    assert kv_max_abs_diff(cache, ref_cache) < 1e-4
    assert len(calls) >= 4 * len(model.model.layers)  # a check before every layer
    gate.close()


@torch.no_grad()
def test_a_hook_on_a_layer_sends_the_step_through_transformers(tiny_model: LoadedModel) -> None:
    model = copy.deepcopy(tiny_model.model)
    fast = FastStep.for_model(model)
    assert fast is not None
    cache = new_cache(model.config)
    assert fast.usable(cache)
    seen: list[int] = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *_: seen.append(1))
    assert not fast.usable(cache)
    gate = LayerGate(model)
    gate.last_logits(_ids(3), cache)
    gate.last_logits(_ids(4)[:, -1:], cache)
    assert len(seen) == 2  # the prefill and the single token both ran the hooked module
    handle.remove()
    gate.close()
