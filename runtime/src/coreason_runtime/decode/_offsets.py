"""Exact byte and character offsets of tokens, so text spans map back to token spans."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["TokenText"]


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode → byte table, inverted (byte-level BPE vocabularies)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class TokenText:
    """Per-token bytes for one tokenizer, and text ↔ token offset maps built from them.

    For byte-level BPE vocabularies (GPT-2, SmolLM2, Llama 3) every token's bytes are exact, so
    a character that spans two tokens (``⟦`` is three UTF-8 bytes) is attributed to both.
    Other tokenizers fall back to decoding tokens one by one.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, bytes] = {}
        self.special_ids: frozenset[int] = frozenset(
            int(i) for i in getattr(tokenizer, "all_special_ids", []) or []
        )
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_ids |= frozenset(
            int(i) for i, t in added.items() if getattr(t, "special", False)
        )

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a special token: its literal text)."""
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        table = _byte_decoder()
        out: bytes
        if token_id in self.special_ids or piece is None:
            out = str(self.tokenizer.decode([token_id])).encode()
        elif all(ch in table for ch in piece):
            out = bytes(table[ch] for ch in piece)
        else:
            out = str(self.tokenizer.decode([token_id])).encode()
        self._cache[token_id] = out
        return out

    def spans(self, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
        """Text of ``ids`` and, for each token, the ``[start, end)`` characters it touches."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        count = 0
        for tok in ids:
            start = count
            out = decoder.decode(self.token_bytes(int(tok)))
            parts.append(out)
            count += len(out)
            pending = bool(decoder.getstate()[0])
            spans.append((start, count + (1 if pending else 0)))
        tail = decoder.decode(b"", final=True)
        parts.append(tail)
        return "".join(parts), spans

    def text(self, ids: Sequence[int]) -> str:
        return self.spans(ids)[0]

    def char_to_token_span(self, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
        """Smallest ``[first, last)`` token range covering characters ``[start, end)``.

        Offsets are relative to ``ids``. Returns ``(k, k)`` for an empty character span.
        """
        _, spans = self.spans(ids)
        first = next((i for i, (_, e) in enumerate(spans) if e > start), len(spans))
        if end <= start:
            return first, first
        last = max((i for i, (s, _) in enumerate(spans) if s < end), default=first - 1)
        return first, max(first, last + 1)

    def lines(self, ids: Sequence[int]) -> list[tuple[int, int, str, int, int]]:
        """Non-blank lines of the text of ``ids``: ``(first, last, text, c0, c1)`` each.

        ``[first, last)`` is the token range touching the line, ``[c0, c1)`` its characters
        (newline included), ``text`` the line without its newline.
        """
        text, spans = self.spans(ids)
        out: list[tuple[int, int, str, int, int]] = []
        pos = 0
        for line in text.splitlines(keepends=True):
            c0, c1 = pos, pos + len(line)
            pos = c1
            if not line.strip():
                continue
            first = next(i for i, (_, e) in enumerate(spans) if e > c0)
            last = max(i for i, (s, _) in enumerate(spans) if s < c1)
            out.append((first, last + 1, line.rstrip("\n"), c0, c1))
        return out
