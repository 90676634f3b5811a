"""The tier matrix: defaults, a TOML file under $COREASON_HOME, environment, and code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import (
    BudgetExceededError,
    ConfigurationError,
    Coordinator,
    OracleConfig,
    RuntimeConfig,
)
from coreason_runtime.route import Capability, FunctionTier, TierSpec, load_matrix
from coreason_runtime.tensor import RemoteTier, SchemaSpec, ScriptedTier
from coreason_runtime.tensor._usage import TokenizerCounter

TOML = """
[route]
policy = "linucb"
lam = 0.001

[[tier]]
name = "local"
kind = "local"

[[tier]]
name = "kinetic"
kind = "kinetic"
base_url = "http://127.0.0.1:9/v1"
model = "smollm2"
weight_out = 2

[[tier]]
name = "oracle"
kind = "oracle"
base_url = "http://127.0.0.1:9/v1"
model = "big"
api_key_env = "TEST_ORACLE_KEY"
weight_in = 10
weight_out = 30
price_out = 1e-5
capability = { k_model = 0.9, families = ["calculus"] }

[[tier]]
name = "double"
kind = "tool"
function = "tests.runtime.route.test_matrix:double"
"""


def double(spec: SchemaSpec, prompt: str) -> dict[str, int]:
    return {"n": 2 * int(prompt.split()[-1])}


@pytest.fixture
def rt(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    monkeypatch.setenv("TEST_ORACLE_KEY", "sk-secret-value")
    (home / "tiers.toml").write_text(TOML)
    runtime = Coordinator()
    yield runtime
    runtime.close()


def test_without_a_file_the_matrix_is_todays_cascade(home: Path) -> None:
    config = RuntimeConfig(oracle=OracleConfig("http://127.0.0.1:9/v1", "m"))
    specs, settings = load_matrix(config, env={})
    assert [(s.name, s.kind) for s in specs] == [("local", "local"), ("oracle", "oracle")]
    assert settings.policy == "learned"
    assert [s.name for s in load_matrix(RuntimeConfig(), env={})[0]] == ["local"]


def test_the_toml_file_configures_tiers_and_policy(rt: Coordinator) -> None:
    assert rt.tiers.names == ["local", "kinetic", "oracle", "double"]
    oracle = rt.tiers.spec("oracle")
    assert (oracle.weight_in, oracle.weight_out, oracle.price_out) == (10, 30, 1e-5)
    assert oracle.capability == Capability(k_model=0.9, families=("calculus",))
    assert rt.tiers.settings.policy == "linucb" and rt.tiers.settings.lam == 0.001
    assert rt.router.tier_names == ["local", "kinetic", "oracle", "double"]


def test_building_gives_each_tier_its_weights_on_the_cage(rt: Coordinator) -> None:
    rt.tiers.build()
    assert rt.budgets.weights("oracle") == (10, 30)
    assert rt.budgets.weights("kinetic") == (1, 2)
    assert rt.budgets.weights("local") == (1, 3)


def test_the_api_key_comes_from_the_environment_and_is_never_shown(rt: Coordinator) -> None:
    oracle = rt.router.tier("oracle")
    assert "sk-secret-value" not in repr(rt.tiers) + repr(rt.tiers.specs) + repr(oracle)
    assert oracle.model_name == "big"


def test_a_tool_tier_answers_by_its_function(rt: Coordinator) -> None:
    rt.budgets.set("wf", ceiling=None)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    res = rt.router.generate(schema, "double 21", workflow_id="wf", tiers=["double"])
    assert res.value == {"n": 42} and res.tier == "double"
    assert res.attempts[0].tokens_out >= 1  # its CPU milliseconds, at least one


def test_environment_overrides_a_field_and_picks_the_tiers(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "tiers.toml").write_text(TOML)
    env = {
        "TEST_ORACLE_KEY": "k",
        "COREASON_TIER_ORACLE_WEIGHT_OUT": "50",
        "COREASON_TIERS": "oracle,local",
        "COREASON_ROUTE_POLICY": "static",
    }
    specs, settings = load_matrix(RuntimeConfig(home=home), env=env)
    assert [s.name for s in specs] == ["oracle", "local"]
    assert specs[0].weight_out == 50 and settings.policy == "static"


def test_a_remote_tier_counts_unreported_stream_tokens_with_its_own_tokenizer(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "tiers.toml").write_text(TOML)
    monkeypatch.setenv("TEST_ORACLE_KEY", "k")
    monkeypatch.setenv("COREASON_TIER_KINETIC_TOKENIZER", "some/tokenizer")
    runtime = Coordinator()
    try:
        kinetic, oracle = runtime.router.tier("kinetic"), runtime.router.tier("oracle")
        assert isinstance(kinetic, RemoteTier) and isinstance(oracle, RemoteTier)
        assert isinstance(kinetic.token_counter, TokenizerCounter)
        assert isinstance(oracle.token_counter, TokenizerCounter)
        assert kinetic.token_counter.model == "some/tokenizer"
        assert kinetic.config.tokenizer == "some/tokenizer"
        assert oracle.token_counter.model == runtime.config.model  # none of its own
    finally:
        runtime.close()
    (home / "tiers.toml").unlink()
    config = RuntimeConfig(oracle=OracleConfig("http://127.0.0.1:9/v1", "m", tokenizer="t/k"))
    specs, _ = load_matrix(config, env={})
    assert specs[-1].tokenizer == "t/k"  # the default oracle keeps COREASON_ORACLE_TOKENIZER


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"COREASON_TIER_NOPE_WEIGHT_OUT": "2"}, "no tier and field match"),
        ({"COREASON_TIERS": "local,ghost"}, "unknown tier"),
        ({"COREASON_ROUTE_POLICY": "magic"}, "unknown routing policy"),
        ({"COREASON_TIER_LOCAL_WEIGHT_IN": "-1"}, "bad tier"),
    ],
)
def test_bad_environment_is_a_configuration_error(
    home: Path, env: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_matrix(RuntimeConfig(home=home), env=env)


def test_an_unknown_field_in_the_file_is_refused(home: Path) -> None:
    (home / "tiers.toml").write_text('[[tier]]\nname = "local"\nkind = "local"\ncolour = "red"\n')
    with pytest.raises(ConfigurationError, match="colour"):
        load_matrix(RuntimeConfig(home=home), env={})


def test_duplicate_and_reserved_names_are_refused(home: Path) -> None:
    (home / "tiers.toml").write_text(
        '[[tier]]\nname="a"\nkind="local"\n[[tier]]\nname="a"\nkind="local"\n'
    )
    with pytest.raises(ConfigurationError, match="unique"):
        load_matrix(RuntimeConfig(home=home), env={})
    with pytest.raises(ValueError, match="reserved"):
        TierSpec(name="human", kind="local")


def test_a_tier_added_in_code_is_installed_on_the_router(home: Path) -> None:
    with Coordinator() as rt:
        rt.tiers.add(
            ScriptedTier("scripted", ['{"n": 1}']),
            weight_in=2,
            weight_out=7,
            capability=Capability(families=("algebra",)),
        )
        assert rt.router.tier_names == ["local", "scripted"]
        assert rt.budgets.weights("scripted") == (2, 7)
        assert rt.tiers.spec("scripted").kind == "custom"
        rt.tiers.remove("scripted")
        assert rt.router.tier_names == ["local"]


def test_a_request_is_leased_and_charged_at_the_answering_tiers_own_weights(
    home: Path,
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    with Coordinator() as rt:
        rt.router.set_tiers([])
        rt.tiers.add(ScriptedTier("cheap", ["nope"], repeat_last=True))
        dear_tier = ScriptedTier("dear", ['{"n": 12345}'], repeat_last=True)
        rt.tiers.add(dear_tier, weight_in=10, weight_out=30)
        rt.budgets.set("wf", ceiling=None)
        res = rt.router.generate(schema, "a number", workflow_id="wf", tiers=["cheap", "dear"])
        assert res.tier == "dear"
        cheap = [a for a in res.attempts if a.tier == "cheap"]
        (dear,) = [a for a in res.attempts if a.tier == "dear"]
        assert dear.cost == 10 * dear.tokens_in + 30 * dear.tokens_out
        assert all(a.cost == a.tokens_in + 3 * a.tokens_out for a in cheap)
        ledger = rt.budgets.get("wf")
        assert ledger.by_tier == {"cheap": sum(a.cost for a in cheap), "dear": dear.cost}
        assert ledger.spent == res.cost and ledger.reserved == 0
        # under a ceiling, the dear tier's lease is cut off at what its own weights allow
        rt.budgets.set("tight", ceiling=10 * dear.tokens_in + 30 * (dear.tokens_out - 1))
        with pytest.raises(BudgetExceededError):
            rt.router.generate(schema, "a number", workflow_id="tight", tiers=["dear"], cache=False)
        tight = rt.budgets.get("tight")
        assert (tight.spent, tight.reserved) == (tight.ceiling, 0)  # every token that fit


def test_a_function_tier_declining_escalates_and_costs_its_cpu(home: Path) -> None:
    def refuse(spec: SchemaSpec, prompt: str) -> object:
        raise ValueError("not a number")

    with Coordinator() as rt:
        rt.budgets.set("wf", ceiling=None)
        rt.router.set_tiers([FunctionTier("tool", refuse), ScriptedTier("oracle", ['{"n": 3}'])])
        res = rt.router.generate({"type": "object"}, "three", workflow_id="wf")
    assert res.tier == "oracle"
    declined = res.attempts[0]
    assert (declined.tier, declined.error_type, declined.index) == ("tool", "TierError", 1)
    assert "declined: not a number" in (declined.error or "")
    assert declined.cost >= 3  # at least one unit of CPU time at the cage's w_out


def test_a_function_tier_says_which_schemas_it_answers() -> None:
    tier = FunctionTier("t", double, accepts=lambda s: s.name == "Output")
    assert not tier.accepts(SchemaSpec.from_user({"type": "object", "title": "Other"}))
    assert tier.accepts(SchemaSpec.from_user({"type": "object"}))
    assert tier.compile(SchemaSpec.from_user({"type": "object"})).errors == {}


def test_a_second_in_kernel_model_is_a_tier_of_its_own(
    home: Path, tmp_path: Path, tiny_model: Any
) -> None:
    folder = tmp_path / "tiny"
    tiny_model.model.save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    (home / "tiers.toml").write_text(
        f'[[tier]]\nname = "local"\nkind = "local"\n'
        f'[[tier]]\nname = "tiny"\nkind = "local"\nmodel = "{folder}"\n'
    )
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]}
    with Coordinator() as rt:
        rt.budgets.set("wf", ceiling=None)
        tiny = rt.router.tier("tiny")
        assert tiny.model_name == str(folder)
        res = rt.router.generate(
            schema, "pick one", workflow_id="wf", tiers=["tiny"], max_tokens=16
        )
        assert res.tier == "tiny" and res.value["a"] in ("x", "y")
        assert not rt.router.tier("local").loaded  # the runtime's own model was never loaded
