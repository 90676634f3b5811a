"""A tiny randomly initialised Llama that shares the real tokenizer, for fast tests."""

from __future__ import annotations

from typing import Any

from coreason_runtime.models._loader import LoadedModel

__all__ = ["tiny_llama"]


def tiny_llama(
    tokenizer: Any,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_size: int | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """Build a random ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary.

    Its outputs are noise, but every token id the real tokenizer knows is a legal output, so
    a grammar mask over it is exercised exactly as over the real model (a random model under
    masking must still produce schema-valid JSON). The same ``seed`` gives the same weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=head_size is None,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model: Any = LlamaForCausalLM(config)
        if head_size is not None:
            model.lm_head = torch.nn.Linear(hidden_size, head_size, bias=False)
    finally:
        torch.random.set_rng_state(generator_state)
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=f"tiny-llama-{hidden_size}x{num_layers}",
        revision=f"random-seed-{seed}",
        device=device,
        path=None,
        dtype="float32",
    )
