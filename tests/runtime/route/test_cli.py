"""`coreason tiers`: the matrix with each tier's weights, capability, health and history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coreason_runtime import Coordinator
from coreason_runtime.cli import main
from coreason_runtime.tensor import ScriptedTier
from pydantic import BaseModel

TOML = """
[[tier]]
name = "local"
kind = "local"

[[tier]]
name = "oracle"
kind = "oracle"
base_url = "http://127.0.0.1:9/v1"
model = "big"
weight_in = 10
weight_out = 30
price_in = 1e-6
price_out = 4e-6
capability = { k_model = 0.8 }
"""


class Answer(BaseModel):
    value: str


def _history(home: Path) -> None:
    """Two requests through a runtime on this home: local fails both, the oracle answers."""
    with Coordinator() as rt:
        rt.budgets.set("wf", ceiling=None)
        rt.router.set_tiers(
            [
                ScriptedTier("local", ["nope"], repeat_last=True),
                ScriptedTier("oracle", ['{"value": "ok"}'], repeat_last=True),
            ]
        )
        for i in range(2):
            rt.router.generate(Answer, f"question {i}", workflow_id="wf")


def test_tiers_lists_the_matrix_with_observed_success_and_cost(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "tiers.toml").write_text(TOML)
    _history(home)
    assert main(["tiers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["local", "oracle"]
    oracle, local = rows["oracle"], rows["local"]
    assert (oracle["weight_in"], oracle["weight_out"], oracle["k_model"]) == (10, 30, 0.8)
    assert oracle["requests"] == 2 and oracle["success_rate"] == 1.0
    assert local["success_rate"] == 0.0 and local["health"] == "ok"
    assert oracle["money"] > 0 and local["money"] == 0.0
    assert main(["tiers"]) == 0
    text = capsys.readouterr().out
    assert "routing policy: learned" in text
    assert "oracle" in text and "10·T_in + 30·T_out" in text and "100%" in text
