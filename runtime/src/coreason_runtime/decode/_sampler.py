"""Token sampling from one row of logits with an explicit torch.Generator (reproducible)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coreason_runtime._exceptions import RequestError

if TYPE_CHECKING:
    import torch

__all__ = ["Sampler"]


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen.

    Parameters
    ----------
    temperature:
        0 means greedy (argmax); otherwise logits are divided by it before sampling.
    top_k:
        Keep only the ``top_k`` most likely tokens (0: all).
    top_p:
        Nucleus sampling: keep the smallest set whose probability reaches ``top_p``.
    seed:
        Seed of the generator a session or a span repair creates for this sampler.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        bad_t = not math.isfinite(self.temperature) or self.temperature < 0
        if bad_t or not 0 < self.top_p <= 1 or self.top_k < 0:
            msg = (
                f"bad sampler settings: temperature={self.temperature}, top_k={self.top_k}, "
                f"top_p={self.top_p}"
            )
            raise RequestError(msg)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed``."""
        import torch

        gen = torch.Generator()
        gen.manual_seed(self.seed)
        return gen

    def sample(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        """One token id from a 1-D row of logits (already masked by any grammar)."""
        import torch

        if self.greedy:
            return int(torch.argmax(logits))
        # in float64, shifted to max 0 first: a vanishing temperature then sends the others
        # to -inf, never the best to +inf (inf - inf would make the softmax NaN)
        scores = logits.double()
        scores = (scores - scores.max()) / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, idx = torch.sort(scores, descending=True)
            cum = torch.softmax(ordered, -1).cumsum(-1)
            drop = cum - torch.softmax(ordered, -1) > self.top_p
            scores = scores.scatter(0, idx, ordered.masked_fill(drop, float("-inf")))
        probs = torch.softmax(scores, -1).cpu()
        return int(torch.multinomial(probs, 1, generator=generator))
