"""Exact metering of a streamed answer: the server's token counts, else a tokenizer's.

A server that sends usage on every chunk (``stream_options.continuous_usage_stats``, as vLLM,
SGLang and ``coreason serve`` do) is metered by its own counts; otherwise each chunk is
counted with a tokenizer (the count of all text so far, less one for a last token that may
still be growing), or as one token when no tokenizer can count. The final usage replaces
every estimate, so the charge equals what the server reports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coreason_runtime.tensor._types import Meter

__all__ = ["StreamMeter", "TokenCounter", "TokenizerCounter"]

logger = logging.getLogger("coreason_runtime.tensor.remote")

# Counts the tokens of a text; None when it cannot (its tokenizer failed to load).
TokenCounter = Callable[[str], int | None]


class TokenizerCounter:
    """Counts tokens with a model's tokenizer (``models.load_tokenizer``), loaded on first use.

    Returns None, once having logged why, when the tokenizer cannot be loaded: the stream is
    then counted one token per chunk and trued up to the server's usage at the end.
    """

    def __init__(self, model: str | None, cache_dir: Path | None = None) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._failed = False

    def _load(self) -> Any:
        with self._lock:
            if self._tokenizer is None and not self._failed:
                from coreason_runtime.models import load_tokenizer

                try:
                    self._tokenizer = load_tokenizer(self.model, cache_dir=self.cache_dir)
                except Exception as e:  # no tokenizer: count chunks instead, and say so once
                    self._failed = True
                    logger.warning("cannot count streamed tokens with %r: %s", self.model, e)
            return self._tokenizer

    def __call__(self, text: str) -> int | None:
        tokenizer = self._load()
        if tokenizer is None:
            return None
        return len(tokenizer.encode(text, add_special_tokens=False))


class StreamMeter:
    """Charges one stream to ``meter`` chunk by chunk, as exactly as the server allows."""

    def __init__(self, meter: Meter, counter: TokenCounter | None) -> None:
        self.meter = meter
        self.counter = counter
        self.parts: list[str] = []
        self.charged_in = 0
        self.charged_out = 0
        self.usage_in: int | None = None
        self.usage_out: int | None = None

    def chunk(self, text: str | None, usage: Any) -> int:
        """Charge one chunk: the prompt tokens the server reports, its text by the chunk's own
        usage or else by counting. Charged before the text is kept, so a refusal
        (``BudgetExceededError`` from the meter) leaves it out. Returns the tokens charged."""
        completion = None
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
            if prompt is not None:
                self.usage_in = prompt
                if prompt > self.charged_in:
                    self.meter.charge(tokens_in=prompt - self.charged_in)
                    self.charged_in = prompt
            if completion is not None:
                self.usage_out = completion
        if not text:
            return 0
        n = completion - self.charged_out if completion is not None else self._estimate(text)
        n = max(n, 0)
        self.meter.charge(tokens_out=n)
        self.charged_out += n
        self.parts.append(text)
        return n

    def _estimate(self, text: str) -> int:
        """A lower bound on the chunk's tokens when the server did not count them."""
        if self.counter is not None:
            so_far = self.counter("".join(self.parts) + text)
            if so_far is not None:
                return max(0, so_far - 1 - self.charged_out)
        return 1  # every content chunk holds at least one token

    def final(self) -> tuple[int, int]:
        """The stream's (tokens in, tokens out): the server's usage when it reported one,
        replacing the estimates up or down, else what was charged."""
        if self.usage_out is None:
            return self.charged_in, self.charged_out
        tokens_in = self.usage_in if self.usage_in is not None else self.charged_in
        if (tokens_in, self.usage_out) != (self.charged_in, self.charged_out):
            if self.usage_out < self.charged_out:
                logger.info(
                    "oracle reported %d output tokens, %d were estimated: corrected",
                    self.usage_out,
                    self.charged_out,
                )
            self.meter.correct(tokens_in, self.usage_out)
            self.charged_in, self.charged_out = tokens_in, self.usage_out
        return self.charged_in, self.charged_out
