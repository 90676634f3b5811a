"""Local models, offline: find, convert once to safetensors, load per process; per-operator
precision maps (probe, choose, validate, apply)."""

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
from coreason_runtime.models._mapping import (
    build_precision_map,
    ensure_map,
    install_map,
    solve,
    validate,
)
from coreason_runtime.models._precision import (
    PrecisionMap,
    QualityBudget,
    Validation,
    apply_map,
    read_map,
    write_map,
)
from coreason_runtime.models._precision_cli import describe_map
from coreason_runtime.models._probe import ProbeRow, ProbeTable, probe_model, step_entropy
from coreason_runtime.models._tiny import tiny_llama

__all__ = [
    "LayerGate",
    "LoadedModel",
    "ModelInfo",
    "PrecisionMap",
    "ProbeRow",
    "ProbeTable",
    "QualityBudget",
    "Validation",
    "apply_map",
    "build_precision_map",
    "decoder_layers",
    "describe_map",
    "ensure_map",
    "install_map",
    "list_models",
    "load_model",
    "load_tokenizer",
    "model_revision",
    "probe_model",
    "pull",
    "read_map",
    "solve",
    "step_entropy",
    "tiny_llama",
    "validate",
    "write_map",
]
