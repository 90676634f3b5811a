"""Region-of-interest splicing: regenerate one span, keep everything else, KV stays exact."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    DecodeError,
    SessionStateError,
    SpanError,
    WorkflowAbortedError,
)
from coreason_runtime.decode._edit import SessionEdit
from coreason_runtime.decode._offsets import TokenText
from coreason_runtime.decode._sampler import Sampler
from coreason_runtime.decode._session import DecodeSession, Origin

if TYPE_CHECKING:
    import torch

    from coreason_runtime.tensor._types import Meter

__all__ = ["RepairResult", "SpanContext", "check_span", "repair_span"]

Replacement = str | Sequence[int] | Callable[["SpanContext"], "str | Sequence[int]"]


@dataclass(frozen=True)
class SpanContext:
    """What a replacement callable (a higher tier, a CAS, a human) sees of the span."""

    prefix: str
    span: str
    suffix: str
    start: int
    end: int
    reason: str | None = None


@dataclass(frozen=True)
class RepairResult:
    """One splice: old ``[start, old_end)`` became ``[start, new_end)``."""

    start: int
    old_end: int
    new_end: int
    old_text: str
    new_text: str
    decoded_tokens: int
    prefilled_tokens: int
    candidates: int
    accepted: bool
    seconds: float


def check_span(session: DecodeSession, start: int, end: int) -> None:
    """Raise :class:`SpanError` unless ``[start, end)`` is a non-empty span of ordinary tokens."""
    n = len(session)
    if not (0 < start < end <= n):
        msg = f"span [{start}, {end}) is out of range for session {session.id} with {n} tokens"
        raise SpanError(msg)
    special = [i for i in range(start, end) if session.tokens[i] in session.engine.text.special_ids]
    if special:
        msg = (
            f"span [{start}, {end}) covers special token(s) at {special}; "
            "chat-template markers cannot be repaired"
        )
        raise SpanError(msg)


def _prefix_len_matching(text: TokenText, toks: list[int], cut: str) -> int | None:
    """The k with ``text(toks[:k]) == cut``, if the cut falls on a token boundary."""
    for k in range(len(toks), -1, -1):
        if text.text(toks[:k]) == cut:
            return k
    return None


@dataclass(frozen=True)
class _Redecode:
    """How a span is re-decoded: a sampler per candidate (the last repeats), grammar, token
    limit, where it ends, and the meter every decoded and re-prefilled token is charged to."""

    samplers: tuple[Sampler, ...]
    grammar: str | None
    limit: int
    stop: tuple[str, ...]
    keep_stop: bool
    meter: Meter | None = None

    def sampler(self, index: int) -> Sampler:
        return self.samplers[min(index, len(self.samplers) - 1)]


def _forward_metered(ed: SessionEdit, ids: Sequence[int], meter: Meter | None) -> torch.Tensor:
    """``ed.forward(ids)``, the tokens paid for as input first (the budget may refuse them)."""
    if meter is not None and ids:
        meter.check(tokens_in=len(ids))
        meter.charge(tokens_in=len(ids))
    return ed.forward(ids)


def _decode_candidate(
    ed: SessionEdit,
    start: int,
    logits0: torch.Tensor,
    how: _Redecode,
    gen: torch.Generator,
    index: int = 0,
) -> tuple[list[int], float, int, bool]:
    """Decode one candidate at ``start``; returns (tokens, mean logprob, decoded, in_cache)."""
    import torch

    engine = ed.session.engine
    mask = engine.new_mask(how.grammar) if how.grammar else None
    sampler = how.sampler(index)
    toks: list[int] = []
    logprob = 0.0
    logits = logits0
    for _ in range(how.limit):
        masked = mask.apply(logits) if mask is not None else logits
        if how.meter is not None:
            how.meter.check(tokens_out=1)  # stop before a token the budget cannot pay for
        tok = sampler.sample(masked, gen)
        if how.meter is not None:
            how.meter.charge(tokens_out=1)  # sampled: paid for, even a stop token
        if tok in engine.stop_ids:
            break
        logprob += float(torch.log_softmax(masked, -1)[tok])
        logits = ed.forward([tok])
        toks.append(tok)
        if mask is not None:
            mask.consume(tok)
            if mask.stopped:
                break
        if how.stop and any(s in engine.text.text(toks) for s in how.stop):
            break
    decoded = len(toks)
    text = engine.text.text(toks)
    hits = [(text.find(s), s) for s in how.stop if s in text]
    if hits:
        idx, s = min(hits)
        cut = text[: idx + (len(s) if how.keep_stop else 0)]
        k = _prefix_len_matching(engine.text, toks, cut)
        if k is None:  # the stop string sits inside a token: re-tokenise the kept text
            ed.crop(start)
            return engine.encode(cut), logprob / max(decoded, 1), decoded, False
        ed.crop(start + k)
        toks = toks[:k]
    return toks, logprob / max(decoded, 1), decoded, True


def repair_span(
    session: DecodeSession,
    start: int,
    end: int,
    *,
    replacement: Replacement | None = None,
    sampler: Sampler | None = None,
    candidates: int = 1,
    accept: Callable[[str], bool] | None = None,
    grammar: str | None = None,
    max_tokens: int | None = None,
    stop: Sequence[str] | None = None,
    reason: str | None = None,
    meter: Meter | None = None,
    temperatures: Sequence[float] | None = None,
    keep_original: bool = False,
) -> RepairResult:
    """Regenerate tokens ``[start, end)`` of ``session`` and splice the result in place.

    The KV cache is rolled back to ``start`` (crop), the span is re-decoded (or replaced by
    ``replacement``: text, token ids, or a callable given a :class:`SpanContext` — a higher
    tier or a CAS for just this span), and the unchanged suffix is re-prefilled in one
    parallel forward pass so its KV is exactly what a full recompute of the spliced tokens
    gives.

    Parameters
    ----------
    candidates, accept:
        Decode up to ``candidates`` spans; keep the first ``accept(text)`` passes, else the
        most likely (``keep_original``: the old span). ``sampler`` defaults to the session's
        (T=0.7 for several candidates); ``temperatures`` is a ladder, one per candidate.
        ``grammar`` optionally constrains the span; ``max_tokens`` and ``stop`` bound it (by
        default it ends at a newline, kept only if the old span ended with one).
    meter:
        Charged every decoded token as output (checked first), every re-prefilled one as input.

    Raises
    ------
    SpanError
        The span is out of range or covers a special token.
    SessionStateError
        The session is running (pause it first) or was never prefilled.
    DecodeError
        The repair failed; the session is exactly as before.
    BudgetExceededError, WorkflowAbortedError
        From ``meter``: the budget refused a token; the session is exactly as before.
    """
    _check_request(session, start, end, candidates, replacement)
    t0 = time.perf_counter()
    tokens = list(session.tokens)
    text = session.engine.text
    ctx = SpanContext(
        text.text(tokens[session.prompt_len : start]),
        text.text(tokens[start:end]),
        text.text(tokens[end:]),
        start,
        end,
        reason,
    )
    how = None
    if replacement is None:
        how = _redecode_plan(
            session, ctx, sampler, candidates, grammar, max_tokens, stop, meter, temperatures
        )
    new, decoded, prefilled, tried, accepted = _edit(
        session, ctx, tokens, how, replacement, candidates, accept, keep_original, meter
    )
    result = RepairResult(
        start, end, start + len(new), ctx.span, text.text(new), decoded, prefilled, tried,
        accepted, time.perf_counter() - t0,
    )  # fmt: skip
    _announce(session, result, reason)
    return result


def _edit(
    session: DecodeSession,
    ctx: SpanContext,
    tokens: list[int],
    how: _Redecode | None,
    replacement: Replacement | None,
    candidates: int,
    accept: Callable[[str], bool] | None,
    keep_original: bool,
    meter: Meter | None,
) -> tuple[list[int], int, int, int, bool]:
    """The repair under the session's edit: (new tokens, decoded, prefilled, tried, accepted)."""
    start, end = ctx.start, ctx.end
    try:
        with session.edit("repairing a span", keep_from=start, allow_finished=True) as ed:
            if how is None:
                assert replacement is not None
                new, in_cache, decoded, tried, accepted = _replace(ed, ctx, replacement, accept)
            else:
                new, in_cache, decoded, tried, accepted = _candidates(
                    ed, start, tokens, how, candidates, accept
                )
            if keep_original and not accepted:
                ed.rollback()  # nothing passed: the session stays exactly as it was
                new, prefilled = tokens[start:end], 0
            else:
                prefilled = _splice(ed, start, end, new, in_cache, meter)
    except (DecodeError, BudgetExceededError, WorkflowAbortedError):
        raise
    except Exception as e:
        msg = f"repairing span [{start}, {end}) of {session.id} failed: {type(e).__name__}: {e}"
        raise DecodeError(msg) from e
    return new, decoded, prefilled, tried, accepted


def _check_request(
    session: DecodeSession, start: int, end: int, candidates: int, replacement: object
) -> None:
    check_span(session, start, end)
    if candidates < 1:
        msg = f"candidates must be >= 1, got {candidates}"
        raise SpanError(msg)
    if not session.prefilled and replacement is None:
        msg = f"session {session.id} has no KV yet to re-decode from; run it first"
        raise SessionStateError(msg)


def _announce(session: DecodeSession, result: RepairResult, reason: str | None) -> None:
    session.emit(
        EventType.SPAN_REPAIRED,
        start=result.start,
        old_end=result.old_end,
        new_end=result.new_end,
        old_text=result.old_text,
        new_text=result.new_text,
        decoded_tokens=result.decoded_tokens,
        prefilled_tokens=result.prefilled_tokens,
        candidates=result.candidates,
        accepted=result.accepted,
        reason=reason,
    )


def _replace(
    ed: SessionEdit,
    ctx: SpanContext,
    replacement: Replacement,
    accept: Callable[[str], bool] | None,
) -> tuple[list[int], int, int, int, bool]:
    """The replacement's tokens (a callable is given the span's context)."""
    engine = ed.session.engine
    if callable(replacement):
        replacement = replacement(ctx)
    new = (
        engine.encode(replacement)
        if isinstance(replacement, str)
        else [int(t) for t in replacement]
    )
    accepted = bool(accept(engine.text.text(new))) if accept is not None else True
    return new, 0, 0, 1, accepted


def _redecode_plan(
    session: DecodeSession,
    ctx: SpanContext,
    sampler: Sampler | None,
    candidates: int,
    grammar: str | None,
    max_tokens: int | None,
    stop: Sequence[str] | None,
    meter: Meter | None = None,
    temperatures: Sequence[float] | None = None,
) -> _Redecode:
    if sampler is None:
        sampler = session.sampler if candidates == 1 else Sampler(temperature=0.7, seed=ctx.start)
    samplers: tuple[Sampler, ...] = (sampler,)
    if temperatures:
        samplers = tuple(
            Sampler(t, sampler.top_k, sampler.top_p, sampler.seed) for t in temperatures
        )
    stops = ("\n",) if stop is None else tuple(stop)
    span_len = ctx.end - ctx.start
    return _Redecode(
        samplers,
        grammar,
        max_tokens or max(2 * span_len, span_len + 8),
        stops,
        any(ctx.span.endswith(s) for s in stops),
        meter,
    )


def _candidates(
    ed: SessionEdit,
    start: int,
    tokens: list[int],
    how: _Redecode,
    candidates: int,
    accept: Callable[[str], bool] | None,
) -> tuple[list[int], int, int, int, bool]:
    """Decode up to ``candidates`` spans; the first accepted, else the most likely."""
    engine = ed.session.engine
    gen = how.sampler(0).generator()
    ed.crop(start - 1)  # one token re-run gives the logits at `start`
    logits0 = _forward_metered(ed, [tokens[start - 1]], how.meter)
    best: tuple[float, list[int]] | None = None
    decoded = tried = 0
    for index in range(candidates):
        tried += 1
        ed.crop(start)
        toks, score, n_dec, kept = _decode_candidate(ed, start, logits0, how, gen, index)
        decoded += n_dec
        if accept is None or accept(engine.text.text(toks)):
            return toks, len(toks) if kept else 0, decoded, tried, True
        if best is None or score > best[0]:
            best = (score, toks)
    return (best[1] if best is not None else []), 0, decoded, tried, False


def _splice(
    ed: SessionEdit,
    start: int,
    end: int,
    new: list[int],
    in_cache: int,
    meter: Meter | None = None,
) -> int:
    """Put ``new`` in place of ``[start, end)``; re-prefill what follows. Tokens prefilled."""
    tokens = ed.tokens
    if ed.session.prefilled:
        if in_cache == 0:
            ed.crop(start)
        rest = new[in_cache:] + tokens[end:]
        if rest:
            logits = _forward_metered(ed, rest, meter)
        else:  # nothing follows the splice: re-run the last kept token for its logits
            ed.crop(start + len(new) - 1)
            logits = _forward_metered(ed, [(tokens[:start] + new)[-1]], meter)
    else:  # never prefilled: the splice is a token edit
        rest, logits = [], None
    origins = ed.origins[:start] + [Origin.REPAIRED] * len(new) + ed.origins[end:]
    ed.commit(
        tokens[:start] + new + tokens[end:], origins, logits, replay_grammar=ed.session.prefilled
    )
    return len(rest)
