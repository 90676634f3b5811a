"""The offline model loader: conversion once, atomically; typed errors; the per-process cache."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import ConfigurationError, TierUnavailableError
from coreason_runtime._config import DEFAULT_MODEL
from coreason_runtime.models import LoadedModel, list_models, load_model, pull, tiny_llama
from coreason_runtime.models._cli import cmd_list, cmd_pull
from coreason_runtime.models._loader import MANIFEST


def test_pull_of_converted_default_returns_manifested_folder(
    model_tokenizer: Any, model_cache: Path
) -> None:
    folder = pull(cache_dir=model_cache)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["name"] == DEFAULT_MODEL
    assert (folder / "model.safetensors").is_file()
    assert len(manifest["revision"]) == 24


def test_second_pull_does_not_convert_again(model_tokenizer: Any, model_cache: Path) -> None:
    folder = pull(cache_dir=model_cache)
    before = (folder / MANIFEST).stat().st_mtime_ns
    assert pull(DEFAULT_MODEL, cache_dir=model_cache) == folder
    assert (folder / MANIFEST).stat().st_mtime_ns == before


def test_unreadable_gguf_fails_typed_and_leaves_no_folder(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    cache = tmp_path / "cache"
    with pytest.raises(TierUnavailableError):
        pull(str(bogus), cache_dir=cache)
    leftovers = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_unknown_model_is_unavailable_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(TierUnavailableError, match="not available offline"):
        load_model("nobody/no-such-model", cache_dir=tmp_path)


def test_empty_model_name_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        load_model("  ", cache_dir=tmp_path)


def test_unknown_dtype_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="dtype"):
        load_model(dtype="float7", cache_dir=tmp_path)


def test_list_models_shows_the_converted_default(model_tokenizer: Any, model_cache: Path) -> None:
    infos = list_models(cache_dir=model_cache)
    default = next(i for i in infos if i.name == DEFAULT_MODEL)
    assert default.converted
    assert default.revision is not None


def test_list_models_ignores_folders_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "half-written").mkdir()
    names = [i.name for i in list_models(cache_dir=tmp_path)]
    assert "half-written" not in names


def test_cmd_pull_prints_the_folder(model_tokenizer: Any, model_cache: Path) -> None:
    out = io.StringIO()
    rc = cmd_pull(argparse.Namespace(name=None, cache_dir=model_cache), out=out)
    assert rc == 0
    assert Path(out.getvalue().strip()) == pull(cache_dir=model_cache)


def test_cmd_pull_reports_a_missing_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rc = cmd_pull(argparse.Namespace(name="nobody/no-such-model", cache_dir=tmp_path))
    assert rc == 1


def test_cmd_list_json_names_the_default(model_tokenizer: Any, model_cache: Path) -> None:
    out = io.StringIO()
    assert cmd_list(argparse.Namespace(json=True, cache_dir=model_cache), out=out) == 0
    rows = json.loads(out.getvalue())
    assert any(r["name"] == DEFAULT_MODEL and r["converted"] for r in rows)


def test_tiny_llama_weights_depend_only_on_seed(model_tokenizer: Any) -> None:
    a = tiny_llama(model_tokenizer, seed=3).model.state_dict()
    b = tiny_llama(model_tokenizer, seed=3).model.state_dict()
    c = tiny_llama(model_tokenizer, seed=4).model.state_dict()
    key = "model.embed_tokens.weight"
    assert bool((a[key] == b[key]).all())
    assert not bool((a[key] == c[key]).all())


def test_tiny_llama_spans_the_real_vocabulary(tiny_model: LoadedModel) -> None:
    assert tiny_model.vocab_size == len(tiny_model.tokenizer)


@pytest.mark.model
def test_load_model_is_cached_per_process(real_model: LoadedModel, model_cache: Path) -> None:
    assert load_model(cache_dir=model_cache) is real_model
    assert real_model.name == DEFAULT_MODEL
    assert real_model.revision == json.loads((real_model.path / MANIFEST).read_text())["revision"]
