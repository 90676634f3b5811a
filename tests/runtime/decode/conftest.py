"""Fixtures for decode tests: a tiny random Llama over the real tokenizer, and the real model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from coreason_runtime import EventBus
from coreason_runtime.decode import DecodeEngine, DecodeSession, kv_max_abs_diff

from tests._fixtures.serve import shared_model_cache


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    from coreason_runtime.models import load_tokenizer

    return load_tokenizer(cache_dir=shared_model_cache())


@pytest.fixture(scope="session")
def tiny_model(smol_tokenizer: Any) -> Any:
    from coreason_runtime.models import tiny_llama

    return tiny_llama(smol_tokenizer, seed=0, num_layers=4).model


@pytest.fixture
def engine(tiny_model: Any, smol_tokenizer: Any, bus: EventBus) -> Iterator[DecodeEngine]:
    import torch

    # the tiny model's matmuls are too small for two threads; on a loaded machine the
    # OpenMP spin-wait makes them ~8x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = DecodeEngine(tiny_model, smol_tokenizer, bus=bus)
    yield eng
    eng.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_model() -> Any:
    from coreason_runtime.models import load_model

    # fp32: these tests compare KV and logits with a fresh prefill to 1e-4, which holds for
    # the decode mechanics, not across a precision map's kernels (tests/runtime/models covers
    # the map on the real model)
    return load_model(device="cpu", cache_dir=shared_model_cache(), precision="fp32")


@pytest.fixture
def real_engine(real_model: Any) -> Iterator[DecodeEngine]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see `engine`: two threads thrash on a shared 2-core machine
    eng = DecodeEngine(real_model.model, real_model.tokenizer, bus=EventBus())
    yield eng
    eng.close()
    torch.set_num_threads(threads)


def assert_consistent(session: DecodeSession, atol: float = 1e-4) -> None:
    """The session's KV and next-token logits equal a fresh full prefill of its tokens.

    A session that finished on its last token defers that token's forward pass until
    something needs it: ``sync()`` runs it (and must leave the KV exact).
    """
    assert session.kv_length >= len(session) - 1
    session.sync()
    assert session.kv_length == len(session)
    cache, logits = session.engine.prefill(session.tokens)
    assert kv_max_abs_diff(cache, session.cache) <= atol
    assert session.next_logits is not None
    assert float((logits - session.next_logits).abs().max()) <= atol
