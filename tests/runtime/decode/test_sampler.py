"""The sampler on extreme temperatures (found by schemathesis: a 500 on temperature=3e-92)."""

from __future__ import annotations

import pytest
import torch
from coreason_runtime.decode import Sampler


@pytest.mark.parametrize("temperature", [2.8e-92, 1e-300, 5e-324])
def test_a_vanishing_temperature_samples_the_best_token(temperature: float) -> None:
    logits = torch.tensor([0.5, 3.0, float("-inf"), 2.9])
    sampler = Sampler(temperature=temperature, seed=1)
    assert sampler.sample(logits, sampler.generator()) == 1


def test_a_huge_temperature_samples_only_allowed_tokens() -> None:
    logits = torch.tensor([0.5, float("-inf"), 3.0])
    sampler = Sampler(temperature=1e300, seed=2)
    gen = sampler.generator()
    assert {sampler.sample(logits, gen) for _ in range(50)} <= {0, 2}
