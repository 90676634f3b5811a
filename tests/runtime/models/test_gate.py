"""The layer gate: checks at decoder-layer boundaries and between the LM head's row blocks."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from coreason_runtime.models import LayerGate, LoadedModel, decoder_layers
from transformers import DynamicCache


class Stop(Exception):
    pass


def _ids(n: int, start: int = 100) -> torch.Tensor:
    return torch.tensor([list(range(start, start + n))])


def _blocks(model: Any) -> int:
    rows = model.get_output_embeddings().weight.shape[0]
    return -(-rows // LayerGate.head_rows)


def test_gate_is_one_per_model(tiny_model: LoadedModel) -> None:
    model = tiny_model.model
    assert LayerGate.for_model(model) is LayerGate.for_model(model)
    assert len(LayerGate.for_model(model).handles) == len(decoder_layers(model))


@torch.no_grad()
def test_split_head_gives_the_models_own_logits(tiny_model: LoadedModel) -> None:
    model = tiny_model.model
    gate = LayerGate.for_model(model)
    calls: list[int] = []
    cache = DynamicCache()
    with gate.checking(lambda: calls.append(1)):
        got = gate.last_logits(_ids(7), cache)
    ref = model(input_ids=_ids(7), use_cache=False).logits[0, -1].float()
    assert torch.allclose(got, ref, atol=1e-5)
    n_layers = len(decoder_layers(model))
    assert _blocks(model) > 1  # the real vocabulary: the head is split
    assert len(calls) == n_layers + _blocks(model) - 1
    assert cache.get_seq_length() == 7


@torch.no_grad()
def test_a_raising_check_abandons_the_pass_inside_the_head(tiny_model: LoadedModel) -> None:
    model = tiny_model.model
    gate = LayerGate.for_model(model)
    n_layers = len(decoder_layers(model))
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == n_layers + 2:  # after every layer ran, two head blocks in
            raise Stop

    cache = DynamicCache()
    with gate.checking(check), pytest.raises(Stop):
        gate.last_logits(_ids(5), cache)
    assert calls == n_layers + 2
    assert gate.check is None  # the check is uninstalled on the way out


@torch.no_grad()
def test_checks_belong_to_the_thread_that_installed_them(tiny_model: LoadedModel) -> None:
    model = tiny_model.model
    gate = LayerGate.for_model(model)
    hits: list[str] = []
    installed, done = threading.Event(), threading.Event()

    def other() -> None:
        with gate.checking(lambda: hits.append("other")):
            installed.set()
            done.wait(10)

    t = threading.Thread(target=other)
    t.start()
    installed.wait(10)
    try:
        gate.last_logits(_ids(3), DynamicCache())  # no check on this thread
    finally:
        done.set()
        t.join()
    assert hits == []


@torch.no_grad()
def test_checks_nest_and_restore(tiny_model: LoadedModel) -> None:
    gate = LayerGate.for_model(tiny_model.model)
    outer, inner = (lambda: None), (lambda: None)
    with gate.checking(outer):
        with gate.checking(inner):
            assert gate.check is inner
        assert gate.check is outer
    assert gate.check is None
