"""Region-of-interest splicing: regenerate one span, keep everything else, KV stays exact."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import DecodeError, SessionStateError, SpanError
from coreason_runtime.decode._kv import KVSnapshot, crop_to
from coreason_runtime.decode._sampler import Sampler
from coreason_runtime.decode._session import DecodeSession, Origin, SessionState

if TYPE_CHECKING:
    import torch

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


def _prefix_len_matching(session: DecodeSession, toks: list[int], cut: str) -> int | None:
    """The k with ``text(toks[:k]) == cut``, if the cut falls on a token boundary."""
    for k in range(len(toks), -1, -1):
        if session.engine.text.text(toks[:k]) == cut:
            return k
    return None


def _decode_candidate(
    session: DecodeSession,
    start: int,
    logits0: torch.Tensor,
    sampler: Sampler,
    gen: torch.Generator,
    grammar: str | None,
    max_tokens: int,
    stop: Sequence[str],
    keep_stop: bool,
    exact: int | None,
) -> tuple[list[int], float, int, bool]:
    """Decode one candidate at ``start``; returns (tokens, mean logprob, decoded, in_cache)."""
    import torch

    engine = session.engine
    matcher = engine.new_matcher(grammar) if grammar else None
    toks: list[int] = []
    logprob = 0.0
    logits = logits0
    for _ in range(max_tokens):
        masked = engine.mask_logits(matcher, logits)
        tok = sampler.sample(masked, gen)
        if tok in engine.stop_ids:
            break
        logprob += float(torch.log_softmax(masked, -1)[tok])
        logits = engine.forward(session, [tok], interruptible=False)
        toks.append(tok)
        if matcher is not None:
            matcher.consume_token(tok)
            if matcher.is_stopped():
                break
        if exact is not None and len(toks) >= exact:
            break
        if stop and any(s in engine.text.text(toks) for s in stop):
            break
    decoded = len(toks)
    text = engine.text.text(toks)
    hits = [(text.find(s), s) for s in stop if s in text]
    if hits:
        idx, s = min(hits)
        cut = text[: idx + (len(s) if keep_stop else 0)]
        k = _prefix_len_matching(session, toks, cut)
        if k is None:  # the stop string sits inside a token: re-tokenise the kept text
            crop_to(session.cache, start)
            return engine.encode(cut), logprob / max(decoded, 1), decoded, False
        crop_to(session.cache, start + k)
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
        Decode up to ``candidates`` spans and keep the first that ``accept(text)`` passes
        (else the most likely one).
    sampler, grammar:
        How the span is re-decoded: its own sampler (default: the session's, or T=0.7 when
        several candidates are asked for) and an optional llguidance grammar for the span.
    max_tokens, stop:
        Bounds for the re-decode. By default the span ends at a newline (steps are lines),
        kept only if the old span ended with one.

    Raises
    ------
    SpanError
        The span is out of range or covers a special token.
    SessionStateError
        The session is running (pause it first) or was never prefilled.
    DecodeError
        The repair failed; the session is exactly as before.
    """
    check_span(session, start, end)
    with session._cv:
        if session._executing or (
            session.state is SessionState.RUNNING and session in session.engine._sessions
        ):
            msg = f"pause session {session.id} before repairing a span"
            raise SessionStateError(msg)
        if not session._prefilled and replacement is None:
            msg = f"session {session.id} has no KV yet to re-decode from; run it first"
            raise SessionStateError(msg)
        if not session._prefilled:  # nothing computed yet: the splice is a token edit
            return _splice_tokens_only(session, start, end, replacement, reason)  # type: ignore[arg-type]
        session._executing = True
    t0 = time.perf_counter()
    engine = session.engine
    tokens = list(session.tokens)
    old_text = engine.text.text(tokens[start:end])
    snapshot = KVSnapshot.take(session.cache, start)
    saved = (
        list(session._tokens),
        list(session._origins),
        session.next_logits,
        session.matcher.deep_copy() if session.matcher is not None else None,
    )
    try:
        with engine.lock:
            result = _splice(
                session,
                start,
                end,
                tokens,
                old_text,
                replacement,
                sampler,
                candidates,
                accept,
                grammar,
                max_tokens,
                stop,
                reason,
            )
    except Exception as e:
        crop_to(session.cache, start)
        snapshot.restore(session.cache)
        session._tokens, session._origins, session.next_logits, session.matcher = saved
        if isinstance(e, DecodeError):
            raise
        msg = f"repairing span [{start}, {end}) of {session.id} failed: {type(e).__name__}: {e}"
        raise DecodeError(msg) from e
    finally:
        with session._cv:
            session._executing = False
    result = RepairResult(**{**result.__dict__, "seconds": time.perf_counter() - t0})
    session._emit(
        EventType.SPAN_REPAIRED,
        start=start,
        old_end=end,
        new_end=result.new_end,
        old_text=old_text,
        new_text=result.new_text,
        decoded_tokens=result.decoded_tokens,
        prefilled_tokens=result.prefilled_tokens,
        candidates=result.candidates,
        accepted=result.accepted,
        reason=reason,
    )
    return result


def _splice(
    session: DecodeSession,
    start: int,
    end: int,
    tokens: list[int],
    old_text: str,
    replacement: Replacement | None,
    sampler: Sampler | None,
    candidates: int,
    accept: Callable[[str], bool] | None,
    grammar: str | None,
    max_tokens: int | None,
    stop: Sequence[str] | None,
    reason: str | None,
) -> RepairResult:
    engine = session.engine
    suffix = tokens[end:]
    decoded = 0
    tried = 0
    accepted = True
    in_cache = 0  # how many replacement tokens are already in the cache
    if replacement is not None:
        if callable(replacement):
            ctx = SpanContext(
                engine.text.text(tokens[session.prompt_len : start]),
                old_text,
                engine.text.text(suffix),
                start,
                end,
                reason,
            )
            replacement = replacement(ctx)
        new = (
            engine.encode(replacement)
            if isinstance(replacement, str)
            else [int(t) for t in replacement]
        )
        crop_to(session.cache, start)
        if accept is not None:
            accepted = bool(accept(engine.text.text(new)))
    else:
        if candidates < 1:
            msg = f"candidates must be >= 1, got {candidates}"
            raise SpanError(msg)
        if sampler is None:
            sampler = session.sampler if candidates == 1 else Sampler(temperature=0.7, seed=start)
        gen = sampler.generator()
        stop = ("\n",) if stop is None else tuple(stop)
        keep_stop = any(old_text.endswith(s) for s in stop)
        span_len = end - start
        limit = max_tokens or max(2 * span_len, span_len + 8)
        crop_to(session.cache, start - 1)  # one token re-run gives the logits at `start`
        logits0 = engine.forward(session, [tokens[start - 1]], interruptible=False)
        best: tuple[float, list[int]] | None = None
        accepted = False
        new = []
        for _ in range(candidates):
            tried += 1
            crop_to(session.cache, start)
            toks, score, n_dec, kept = _decode_candidate(
                session, start, logits0, sampler, gen, grammar, limit, stop, keep_stop, None
            )
            decoded += n_dec
            text = engine.text.text(toks)
            if accept is None or accept(text):
                new, accepted = toks, True
                in_cache = len(toks) if kept else 0
                break
            if best is None or score > best[0]:
                best = (score, toks)
        if not accepted and best is not None:
            new = best[1]
            crop_to(session.cache, start)
        if not accepted or in_cache == 0:
            crop_to(session.cache, start)
    rest = new[in_cache:] + suffix
    if rest:
        logits = engine.forward(session, rest, interruptible=False)
    else:  # nothing follows the splice: re-run the last kept token for its logits
        crop_to(session.cache, start + len(new) - 1)
        logits = engine.forward(session, [(tokens[:start] + new)[-1]], interruptible=False)
    spliced = tokens[:start] + new + suffix
    origins = list(session._origins)
    session._tokens = spliced
    session._origins = origins[:start] + [Origin.REPAIRED] * len(new) + origins[end:]
    session.next_logits = logits
    if session.matcher is not None:
        _replay_matcher(session)
    return RepairResult(
        start,
        end,
        start + len(new),
        old_text,
        engine.text.text(new),
        decoded,
        len(rest),
        tried or 1,
        accepted,
        0.0,
    )


def _splice_tokens_only(
    session: DecodeSession, start: int, end: int, replacement: Replacement, reason: str | None
) -> RepairResult:
    """Splice into a session whose context was never prefilled (no KV to keep exact)."""
    engine = session.engine
    tokens = list(session.tokens)
    old_text = engine.text.text(tokens[start:end])
    if callable(replacement):
        ctx = SpanContext(
            engine.text.text(tokens[session.prompt_len : start]),
            old_text,
            engine.text.text(tokens[end:]),
            start,
            end,
            reason,
        )
        try:
            replacement = replacement(ctx)
        except Exception as e:
            msg = f"the replacement for span [{start}, {end}) failed: {type(e).__name__}: {e}"
            raise DecodeError(msg) from e
    new = (
        engine.encode(replacement)
        if isinstance(replacement, str)
        else [int(t) for t in replacement]
    )
    session._tokens = tokens[:start] + new + tokens[end:]
    session._origins = (
        session._origins[:start] + [Origin.REPAIRED] * len(new) + session._origins[end:]
    )
    result = RepairResult(
        start, end, start + len(new), old_text, engine.text.text(new), 0, 0, 1, True, 0.0
    )
    session._emit(
        EventType.SPAN_REPAIRED,
        start=start,
        old_end=end,
        new_end=result.new_end,
        old_text=old_text,
        new_text=result.new_text,
        decoded_tokens=0,
        prefilled_tokens=0,
        candidates=1,
        accepted=True,
        reason=reason,
    )
    return result


def _replay_matcher(session: DecodeSession) -> None:
    """Rebuild the session grammar state over its generated and repaired tokens."""
    matcher: Any = session.matcher
    matcher.reset()
    for tok, origin in zip(session._tokens, session._origins, strict=True):
        if origin in (Origin.GENERATED, Origin.REPAIRED):
            matcher.consume_token(tok)
    if matcher.is_error():
        msg = f"the spliced tokens break session {session.id}'s grammar: {matcher.get_error()}"
        raise SpanError(msg)
