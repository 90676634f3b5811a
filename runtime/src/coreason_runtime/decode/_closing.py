"""Length-aware masking: close a structured value before the tokens run out, or when it loops.

A grammar knows which tokens may come next, not how many more a valid ending needs. This
module finds a short *closing path* from the matcher's current state to a complete value: the
grammar's forced tokens, then, greedily, the token that ends the innermost string, array or
object, else the shortest value the grammar accepts where one is required (``0``, ``""``,
``null``, ``[]``, ...), else the longest token the grammar allows. The path is an upper bound
on the true minimum and, being a real path, can always be followed.

:class:`Closing` (one per decode session) uses it from the session's one masking step: while
the tokens left (``max_new_tokens`` and the meter's grant, whichever is smaller) are far above
the path's length it costs nothing; once they come within ``window`` tokens of it, the mask
narrows to the model's top candidates that still leave a closing path that fits, so the answer
is never cut off mid-value. A repetition guard closes a string or container whose tail repeats
one token n-gram (a small model looping on a phrase) instead of letting it run to the limit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from coreason_runtime.decode._grammar import GrammarMask, TokenizerInfo

__all__ = ["Closing", "JsonLex", "closing_path"]


class JsonLex:
    """Where a prefix of JSON text stands: open containers, inside a string, after a backslash."""

    __slots__ = ("escape", "in_string", "stack")

    def __init__(self) -> None:
        self.stack: list[int] = []  # b"{" or b"[" per open container
        self.in_string = False
        self.escape = False

    @classmethod
    def of(cls, data: bytes) -> JsonLex:
        lex = cls()
        lex.feed(data)
        return lex

    def feed(self, data: bytes) -> None:
        for c in data:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == 0x5C:  # backslash
                    self.escape = True
                elif c == 0x22:  # quote
                    self.in_string = False
            elif c == 0x22:
                self.in_string = True
            elif c in (0x7B, 0x5B):  # { [
                self.stack.append(c)
            elif c in (0x7D, 0x5D) and self.stack:  # } ]
                self.stack.pop()

    def copy(self) -> JsonLex:
        out = JsonLex()
        out.stack, out.in_string, out.escape = list(self.stack), self.in_string, self.escape
        return out

    @property
    def depth(self) -> int:
        return len(self.stack)


# A separator first (after a complete value: a number accepts more digits forever), then the
# shortest values, for where the grammar still requires one.
_FILLERS = (",", ":", "0", '""', "null", "false", "true", "[]", "{}", "{", "[", '"', "1", "-")


@dataclass
class _Vocab:
    """Token ids of a tokenizer that closing paths are built from (one per tokenizer)."""

    string_closers: list[int]  # a quote, then only ] and }: end the string (and more)
    closers: list[int]  # only ] and }
    fillers: list[int]
    quote: int | None
    lengths: np.ndarray[Any, Any]  # byte length per token id, 0 for special tokens
    data: list[bytes]  # bytes per token id (empty for special tokens)


_VOCABS: dict[str, _Vocab] = {}
_VOCABS_LOCK = threading.Lock()
_CLOSER = re.compile(rb"[\]}]+")
_STRING_CLOSER = re.compile(rb'"[\]}]*')


def _vocab(info: TokenizerInfo) -> _Vocab:
    with _VOCABS_LOCK:
        hit = _VOCABS.get(info.ident)
    if hit is not None:
        return hit
    import numpy as np

    ll = info.ll
    data: list[bytes] = []
    for t in range(info.vocab_size):
        try:
            data.append(b"" if ll.is_special_token(t) else ll.decode_bytes([t]))
        except (ValueError, IndexError):  # beyond the tokenizer (a padded vocabulary)
            data.append(b"")
    by_text: dict[bytes, int] = {}
    for t, b in enumerate(data):
        if b:
            by_text.setdefault(b, t)
    closers = sorted(
        (t for t, b in enumerate(data) if _CLOSER.fullmatch(b)), key=lambda t: -len(data[t])
    )
    strings = sorted(
        (t for t, b in enumerate(data) if _STRING_CLOSER.fullmatch(b)), key=lambda t: -len(data[t])
    )
    # after a key separator the grammar often still wants its space: " 0", ' ""', " null", ...
    wanted = [v.encode() for s in _FILLERS for v in (s, f" {s}")]
    fillers = [by_text[b] for b in wanted if b in by_text]
    vocab = _Vocab(
        string_closers=strings,
        closers=closers,
        fillers=fillers,
        quote=by_text.get(b'"'),
        lengths=np.array([len(b) for b in data], dtype=np.int32),
        data=data,
    )
    with _VOCABS_LOCK:
        _VOCABS[info.ident] = vocab
    return vocab


def _pick(matcher: Any, candidates: Sequence[int]) -> int | None:
    for t in candidates:
        if matcher.validate_tokens([t]) == 1:
            return t
    return None


def _longest_allowed(grammar: GrammarMask, vocab: _Vocab) -> int | None:
    import numpy as np

    from coreason_runtime._exceptions import GrammarDeadEndError

    try:
        allowed = grammar.allowed()
    except GrammarDeadEndError:
        return None
    n = min(len(allowed), len(vocab.lengths))
    scores = np.where(allowed[:n], vocab.lengths[:n], -1)
    best = int(scores.argmax())
    return best if scores[best] > 0 else None


def _next_token(grammar: GrammarMask, lex: JsonLex, vocab: _Vocab) -> int | None:
    """The greedy closing choice at the matcher's state (known not to be accepting)."""
    matcher = grammar.matcher
    if lex.in_string:
        tok = _pick(matcher, vocab.string_closers)
    else:
        tok = _pick(matcher, vocab.closers)
        if tok is None:
            tok = _pick(matcher, vocab.fillers)
    return tok if tok is not None else _longest_allowed(grammar, vocab)


def closing_path(grammar: GrammarMask, lex: JsonLex, limit: int) -> list[int] | None:
    """A token path from ``grammar``'s state to a complete value, at most ``limit`` long.

    ``lex`` is where the text consumed so far stands (it is not changed). The matcher is
    left exactly where it was (every token tried is rolled back). ``None`` when no path of
    at most ``limit`` tokens was found (or the grammar is at a dead end).
    """
    vocab = _vocab(grammar.info)
    matcher = grammar.matcher
    lex = lex.copy()
    path: list[int] = []
    try:
        while not matcher.is_accepting():
            forced = matcher.compute_ff_tokens()
            step = list(forced) if forced else []
            if not step:
                tok = _next_token(grammar, lex, vocab)
                if tok is None:
                    return None
                step = [tok]
            if len(path) + len(step) > limit:
                return None
            if matcher.validate_tokens(step) != len(step):  # a failed consume is final
                return None
            for tok in step:
                matcher.consume_token(tok)
                path.append(tok)
                lex.feed(vocab.data[tok])
        return path
    finally:
        if path:
            matcher.rollback(len(path))


@dataclass
class _Loop:
    """A repetition being closed: where it was found and what closes it."""

    at: int
    depth: int
    in_string: bool


class Closing:
    """A decode session's length-aware narrowing and repetition guard (see the module doc).

    Parameters
    ----------
    window:
        Narrow once the tokens left are within this many of the closing path's length.
    top_k:
        How many of the model's best allowed tokens are checked for a closing path that fits
        (the path's own next token is always allowed).
    repeat_span:
        A tail of at least this many tokens made of one n-gram repeated at least three times
        is a loop (``0`` switches the guard off).
    max_period:
        The longest n-gram the guard looks for.
    """

    def __init__(
        self,
        info: TokenizerInfo,
        *,
        window: int = 16,
        top_k: int = 4,
        repeat_span: int = 16,
        max_period: int = 16,
    ) -> None:
        self.info = info
        self.window = window
        self.top_k = top_k
        self.repeat_span = repeat_span
        self.max_period = max_period
        # "budget" or "repetition" once it narrowed a step (greedy: replaced the argmax)
        self.closed: str | None = None
        self.checks = 0  # closing paths computed (each costs tens of microseconds)
        self._check_at: int | None = None  # look again when the tokens left drop to this
        self._last_left = 0
        self._loop: _Loop | None = None
        # closing paths found after candidate tokens: (output length then, {token: path})
        self._ahead: tuple[int, dict[int, list[int]]] = (-1, {})
        self._lexed: list[int] = []
        self._lex = JsonLex()

    def _lex_of(self, output: Sequence[int]) -> JsonLex:
        """The lexer state after ``output``, extending the last one when it is a prefix."""
        m = len(self._lexed)
        if len(output) < m or list(output[:m]) != self._lexed:
            self._lexed, self._lex, m = [], JsonLex(), 0
        if len(output) > m:
            new = list(output[m:])
            self._lex.feed(self.info.ll.decode_bytes(new))
            self._lexed.extend(new)
        return self._lex

    def narrow(
        self,
        logits: torch.Tensor,
        grammar: GrammarMask,
        left: int,
        output: Sequence[int],
        *,
        greedy: bool = False,
    ) -> torch.Tensor:
        """``logits`` (grammar-masked) narrowed to closing paths when needed (else unchanged).

        ``left`` is how many tokens may still be generated, this one included; ``output``
        the tokens the grammar has consumed so far; ``greedy``: the sampler takes the argmax
        (then only the argmax needs a closing path that fits).
        """
        looping = self._loop_guard(logits, grammar, left, output)
        if looping is not None:
            return looping
        if left > self._last_left:  # rewound (an edit, a checkpoint): start over
            self._check_at = None
        self._last_left = left
        if self._check_at is not None and left > self._check_at:
            return logits
        lex = self._lex_of(output)
        path = self._path(grammar, lex, left, output)
        if path is None:  # nothing fits any more: decode on, the attempt will be truncated
            self._check_at = None
            return logits
        slack = left - len(path)
        if slack > self.window:
            # one token lengthens the path by a few at most: look again well before it matters
            self._check_at = left - max(1, (slack - self.window) // 4)
            return logits
        self._check_at = None
        if path:  # greedy choices depend on the state alone: after its first token, the rest
            self._remember(len(output) + 1, path[0], path[1:])
        return self._fit(logits, grammar, lex, left, path, output, greedy=greedy)

    def _path(
        self, grammar: GrammarMask, lex: JsonLex, limit: int, output: Sequence[int]
    ) -> list[int] | None:
        """The closing path from here; the one found for the token just taken when it was."""
        n, known = self._ahead
        path = known.get(output[-1]) if output and n == len(output) else None
        if path is not None:
            return path if len(path) <= limit else None
        self.checks += 1
        return closing_path(grammar, lex, limit)

    def _fit(
        self,
        logits: torch.Tensor,
        grammar: GrammarMask,
        lex: JsonLex,
        left: int,
        path: list[int],
        output: Sequence[int],
        *,
        greedy: bool,
    ) -> torch.Tensor:
        """Keep the model's top candidates after which a closing path still fits."""
        import torch

        top = torch.topk(logits, min(self.top_k, logits.shape[-1]))
        keep: list[int] = []
        vocab = _vocab(self.info)
        for score, tok in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if score == float("-inf"):
                break
            if tok >= len(vocab.data) or not vocab.data[tok]:
                keep.append(tok)  # a stop token the grammar allows: the value is complete
            elif self._fits(grammar, lex, tok, left - 1, len(output) + 1):
                keep.append(tok)
            if greedy and keep:
                break  # the argmax, or the best token that fits
        if greedy and keep and keep[0] == int(top.indices[0]):
            return logits  # the model's own choice fits
        if path and path[0] not in keep:
            keep.append(path[0])
        if not keep:
            return logits
        self.closed = self.closed or "budget"  # the length-aware mask chose for the model
        return _only(logits, keep)  # sampling: only among candidates known to fit

    def _fits(self, grammar: GrammarMask, lex: JsonLex, tok: int, limit: int, n: int) -> bool:
        """Does a closing path of at most ``limit`` tokens follow ``tok``? (Remembered.)"""
        matcher = grammar.matcher
        if matcher.validate_tokens([tok]) != 1:
            return False
        matcher.consume_token(tok)
        after = lex.copy()
        after.feed(_vocab(self.info).data[tok])
        try:
            self.checks += 1
            path = closing_path(grammar, after, limit)
        finally:
            matcher.rollback(1)
        if path is None:
            return False
        self._remember(n, tok, path)
        return True

    def _remember(self, n: int, tok: int, path: list[int]) -> None:
        if self._ahead[0] != n:
            self._ahead = (n, {})
        self._ahead[1][tok] = path

    # --- the repetition guard ----------------------------------------------------------------

    def _loop_guard(
        self, logits: torch.Tensor, grammar: GrammarMask, left: int, output: Sequence[int]
    ) -> torch.Tensor | None:
        """Force the tokens that close a looping string or container, until it is closed."""
        loop = self._loop
        if loop is not None and len(output) < loop.at:  # rewound before the loop was found
            self._loop = loop = None
        if loop is None:
            if not self.repeat_span or not _repeats(output, self.repeat_span, self.max_period):
                return None
            lex = self._lex_of(output)
            if not lex.in_string and not lex.depth:
                return None
            loop = self._loop = _Loop(len(output), lex.depth, lex.in_string)
        lex = self._lex_of(output)
        if lex.depth < loop.depth or (loop.in_string and not lex.in_string):
            self._loop = None  # closed: the model goes on with what follows
            return None
        vocab = _vocab(self.info)
        first = vocab.quote if lex.in_string else None
        if first is None or grammar.matcher.validate_tokens([first]) != 1:
            path = closing_path(grammar, lex, max(left, 1))
            if not path:
                self._loop = None
                return None
            first = path[0]
        self.closed = "repetition"
        return _only(logits, [first])


def _repeats(output: Sequence[int], span: int, max_period: int) -> bool:
    """Does the tail of ``output`` repeat one n-gram (n <= max_period) over >= span tokens?"""
    n = len(output)
    last = output[-1] if n else None
    for p in range(1, max_period + 1):
        need = max(span, 3 * p)
        if n < need:
            return False
        if output[n - 1 - p] != last:
            continue
        if all(output[n - 1 - i] == output[n - 1 - i - p] for i in range(need - p)):
            return True
    return False


def _only(logits: torch.Tensor, keep: Sequence[int]) -> torch.Tensor:
    """Every logit but ``keep``'s set to -inf (a kept one at -inf is lifted to 0)."""
    import torch

    idx = torch.tensor(list(keep), dtype=torch.long, device=logits.device)
    kept = logits[idx]
    out = torch.full_like(logits, float("-inf"))
    out[idx] = torch.where(torch.isfinite(kept), kept, torch.zeros_like(kept))
    return out
