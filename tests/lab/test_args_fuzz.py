"""Fuzzed magic lines into the parser: a valid command, or a UsageError; never a crash."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from IPython.core.error import UsageError

from coreason_lab._args import VERBS, parse_line
from tests._fixtures.fuzz import examples, magic_lines


def parse_or_refuse(line: str) -> bool:
    """The property: a verb with its typed arguments, or a UsageError naming the problem."""
    try:
        verb, args = parse_line(line)
    except UsageError as e:
        assert str(e).strip()
        assert "usage: usage:" not in str(e)
        return False
    assert verb in VERBS
    assert isinstance(args, VERBS[verb][0]) and dataclasses.is_dataclass(args)
    return True


@settings(max_examples=examples(300))
@given(line=magic_lines)
def test_any_magic_line_parses_or_is_a_usage_error(line: str) -> None:
    parse_or_refuse(line)
