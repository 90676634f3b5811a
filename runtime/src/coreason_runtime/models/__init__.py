"""Local models, offline: find, convert once to safetensors, load per process."""

from __future__ import annotations

from coreason_runtime.models._gate import LayerGate, decoder_layers
from coreason_runtime.models._loader import (
    LoadedModel,
    ModelInfo,
    list_models,
    load_model,
    load_tokenizer,
    model_revision,
    pull,
)
from coreason_runtime.models._tiny import tiny_llama

__all__ = [
    "LayerGate",
    "LoadedModel",
    "ModelInfo",
    "decoder_layers",
    "list_models",
    "load_model",
    "load_tokenizer",
    "model_revision",
    "pull",
    "tiny_llama",
]
