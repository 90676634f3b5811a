"""Length-aware masking: closing paths, values closed before the tokens run out, loops closed."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch
from coreason_runtime import BudgetExceededError
from coreason_runtime.decode import DecodeEngine, GrammarMask, Sampler
from coreason_runtime.decode._closing import Closing, JsonLex, _repeats, closing_path
from coreason_runtime.tensor._compiler import compile_grammar

NESTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
        "confidence": {"type": "number", "minimum": 0.5},
        "where": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "kind": {"enum": ["alpha", "beta"]}},
            "required": ["x", "kind"],
        },
    },
    "required": ["topic", "steps", "code", "confidence", "where"],
}


def _mask(engine: DecodeEngine, schema: dict[str, Any], prefix: str = "") -> GrammarMask:
    grammar = compile_grammar(schema, engine.info)
    mask = GrammarMask(grammar.matcher(engine.info), engine.info)
    if prefix:
        assert mask.matcher.consume_tokens(engine.info.ll.tokenize_str(prefix))
    return mask


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        '{"topic": "a long topic that goes on',
        '{"topic": "t", "steps": ["one", "tw',
        '{"topic": "t", "steps": ["a\\',
        '{"topic": "t", "steps": ["a", "b"], "code": "AB',
        '{"topic": "t", "steps": ["a", "b"], "code": "ABC-1", "confidence": 0.',
        '{"topic": "t", "steps": ["a", "b"], "code": "ABC-1", "confidence": 1, "where": {',
    ],
)
def test_a_closing_path_completes_the_value_from_any_state(
    engine: DecodeEngine, prefix: str
) -> None:
    mask = _mask(engine, NESTED, prefix)
    path = closing_path(mask, JsonLex.of(prefix.encode()), 200)
    assert path is not None
    text = prefix + engine.info.ll.decode_str(path)
    jsonschema.validate(json.loads(text), NESTED)


def test_a_closing_path_leaves_the_matcher_where_it_was(engine: DecodeEngine) -> None:
    prefix = '{"topic": "x", "steps": ["a'
    mask = _mask(engine, NESTED, prefix)
    before = mask.allowed().copy()
    assert closing_path(mask, JsonLex.of(prefix.encode()), 200) is not None
    assert (mask.allowed() == before).all()
    assert not mask.accepting


def test_no_closing_path_longer_than_the_limit(engine: DecodeEngine) -> None:
    mask = _mask(engine, NESTED)
    full = closing_path(mask, JsonLex(), 200)
    assert full is not None
    assert closing_path(mask, JsonLex(), len(full) - 1) is None
    assert closing_path(mask, JsonLex(), len(full)) == full


def test_the_lexer_tracks_strings_escapes_and_containers() -> None:
    lex = JsonLex.of(b'{"a": ["x\\"}]", {"b": "')
    assert lex.in_string
    assert lex.depth == 3
    lex.feed(b'"}]')
    assert not lex.in_string
    assert lex.depth == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_new", [52, 80])
def test_a_session_closes_its_value_within_max_new_tokens(
    engine: DecodeEngine, seed: int, max_new: int
) -> None:
    mask = _mask(engine, NESTED)
    session = engine.session(
        "JSON please", max_new_tokens=max_new, grammar=mask, sampler=Sampler(1.0, seed=seed)
    )
    session.run()
    assert session.n_generated <= max_new
    jsonschema.validate(json.loads(session.output_text), NESTED)
    assert session.closing is not None
    assert session.closing.closed in {"budget", "repetition"}


def test_without_closing_the_same_session_is_cut_off(engine: DecodeEngine) -> None:
    mask = _mask(engine, NESTED)
    session = engine.session(
        "JSON please", max_new_tokens=52, grammar=mask, sampler=Sampler(1.0), closing=False
    )
    session.run()
    assert session.finish_reason == "length"
    assert not mask.accepting


class _OutputCeiling:
    """A meter whose grant ends after ``limit`` output tokens."""

    def __init__(self, limit: int) -> None:
        self.limit, self.tokens_in, self.tokens_out = limit, 0, 0

    @property
    def max_out(self) -> int:
        return self.limit - self.tokens_out

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        if self.tokens_out + tokens_out > self.limit:
            msg = "ceiling reached"
            raise BudgetExceededError(msg)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.check(tokens_in, tokens_out)
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def ensure(
        self, tokens_in: int = 0, tokens_out: int = 0, *, interrupted: object = None
    ) -> bool:
        self.check(tokens_in, tokens_out)
        return True

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        self.tokens_in, self.tokens_out = tokens_in, tokens_out


def test_the_meters_grant_bounds_the_value_like_max_new_tokens(engine: DecodeEngine) -> None:
    mask = _mask(engine, NESTED)
    meter = _OutputCeiling(52)
    session = engine.session(
        "JSON please", max_new_tokens=500, grammar=mask, meter=meter, sampler=Sampler(1.0)
    )
    session.run()  # no BudgetExceededError: the value was closed inside the grant
    assert meter.tokens_out <= 52
    jsonschema.validate(json.loads(session.output_text), NESTED)


def test_a_grant_too_small_for_any_value_still_raises(engine: DecodeEngine) -> None:
    mask = _mask(engine, NESTED)
    session = engine.session(
        "JSON please", max_new_tokens=500, grammar=mask, meter=_OutputCeiling(5)
    )
    with pytest.raises(BudgetExceededError):
        session.run()


def test_repeats_finds_a_looping_tail() -> None:
    assert _repeats([9, 1, 2, 3] * 6, span=16, max_period=16)
    assert _repeats([7] * 16, span=16, max_period=16)
    assert not _repeats([7] * 15, span=16, max_period=16)
    assert not _repeats(list(range(40)), span=16, max_period=16)
    assert not _repeats([1, 2, 3, 4, 5, 6] * 2, span=16, max_period=16)


def test_a_looping_string_is_closed(engine: DecodeEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    word = engine.info.ll.tokenize_str(" again")
    prefix = engine.info.ll.tokenize_str('{"a": "once') + word * 16
    grammar = compile_grammar(schema, engine.info)
    mask = GrammarMask(grammar.matcher(engine.info), engine.info)
    assert mask.matcher.consume_tokens(prefix)
    closing = Closing(engine.info)
    logits = mask.apply(torch.zeros(engine.info.vocab_size))
    out = closing.narrow(logits, mask, 1000, prefix)
    (kept,) = torch.isfinite(out).nonzero().flatten().tolist()
    assert engine.info.ll.decode_str([kept]).startswith('"')
    assert closing.closed == "repetition"
    mask.consume(kept)  # closed: the guard leaves the model to go on with "b"
    masked = mask.apply(torch.zeros(engine.info.vocab_size))
    assert torch.equal(closing.narrow(masked, mask, 999, [*prefix, kept]), masked)


def test_far_from_the_limit_nothing_is_narrowed(engine: DecodeEngine) -> None:
    mask = _mask(engine, NESTED)
    closing = Closing(engine.info)
    logits = mask.apply(torch.randn(engine.info.vocab_size))
    assert torch.equal(closing.narrow(logits, mask, 1000, []), logits)
    assert closing.closed is None
