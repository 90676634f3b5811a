"""The real SmolLM2 with the precision map `coreason models pull` built: validated, applied at
load, decoding grammar-valid JSON, pausing at layer boundaries and resuming identically."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from coreason_runtime.decode import DecodeEngine, Sampler, SessionState, TokenGroups
from coreason_runtime.models import LoadedModel, read_map
from coreason_runtime.models._formats import format_of

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def mapped(real_model: LoadedModel) -> LoadedModel:
    assert real_model.path is not None
    if read_map(real_model.path) is None:
        pytest.fail(f"no precision map beside {real_model.path}: run `coreason models pull`")
    return real_model


@pytest.fixture
def engine(mapped: LoadedModel) -> DecodeEngine:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = DecodeEngine(mapped.model, mapped.tokenizer, lock=mapped.lock)
    yield eng
    eng.close()
    torch.set_num_threads(threads)


def test_the_default_model_loads_with_its_validated_map(mapped: LoadedModel) -> None:
    pmap = mapped.precision
    assert pmap is not None and pmap.valid and pmap.revision == mapped.revision
    name, fmt = next(iter(pmap.modules.items()))
    assert format_of(mapped.model.get_submodule(name)) == fmt


def test_the_map_decodes_schema_valid_json(engine: DecodeEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "n": {"type": "integer"}},
        "required": ["name", "n"],
        "additionalProperties": False,
    }
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    s = engine.generate(
        "Give a prime as JSON.", max_new_tokens=40, grammar=engine.new_mask(grammar)
    )
    value = json.loads(s.output_text)
    assert set(value) == {"name", "n"}
    assert engine.precision.startswith("POPB map")


def test_a_pause_inside_a_mapped_step_resumes_identically(engine: DecodeEngine) -> None:
    hot = Sampler(temperature=0.8, seed=3)
    ref = engine.session("Name three prime numbers.", max_new_tokens=10, sampler=hot)
    ref.run()
    s = engine.session("Name three prime numbers.", max_new_tokens=10, sampler=hot)
    s.run(max_steps=2)
    runner = threading.Thread(target=s.run)
    runner.start()
    s.pause(timeout=30)
    runner.join()
    assert s.state in (SessionState.PAUSED, SessionState.FINISHED)
    if s.state is SessionState.PAUSED:
        s.resume()
        s.run()
    assert s.tokens == ref.tokens


def test_token_groups_run_some_steps_at_full_precision(mapped: LoadedModel) -> None:
    from coreason_runtime.models import apply_map, load_model

    assert mapped.precision is not None
    model = copy.deepcopy(load_model(cache_dir=mapped.path.parent, precision="fp32").model)
    apply_map(model, mapped.precision, token_groups=True)
    engine = DecodeEngine(model, mapped.tokenizer)
    engine.token_groups = TokenGroups(entropy=0.5)
    s = engine.generate("Write a short poem about the sea.", max_new_tokens=24)
    engine.close()
    assert 0 < s.timings.high_steps < s.n_generated
