"""Parsing the first line of a magic into typed arguments, with useful errors."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from coreason_lab._args import AskArgs, BudgetArgs, RunArgs, parse_line


def test_unknown_verb_suggests_the_closest_verb() -> None:
    with pytest.raises(UsageError, match="Did you mean 'budget'"):
        parse_line("budgett wf 10")


def test_unknown_option_suggests_the_closest_option() -> None:
    with pytest.raises(UsageError, match="Did you mean '--workflow'"):
        parse_line("ask Answer --workflw wf")


def test_budget_that_is_not_a_number_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="positive number"):
        parse_line("budget wf lots")


def test_negative_or_infinite_budget_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="positive finite"):
        parse_line("budget wf -5")
    with pytest.raises(UsageError, match="positive finite"):
        parse_line("budget wf inf")


def test_empty_line_lists_the_verbs() -> None:
    with pytest.raises(UsageError, match="needs a verb: abort, ask, budget"):
        parse_line("   ")


def test_unbalanced_quotes_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot parse"):
        parse_line('ask Answer -w "wf')


def test_budget_parses_into_typed_arguments() -> None:
    verb, args = parse_line("budget wf-1 20_000")
    assert (verb, args) == ("budget", BudgetArgs(workflow="wf-1", ceiling=20000.0))


def test_ask_options_are_typed() -> None:
    _, args = parse_line("ask Answer -w wf -t local,oracle -n 64 -o out --background")
    assert args == AskArgs(
        schema="Answer",
        workflow="wf",
        tiers=["local", "oracle"],
        max_tokens=64,
        into="out",
        background=True,
    )


def test_into_must_be_a_variable_name() -> None:
    with pytest.raises(UsageError, match="not a valid Python variable name"):
        parse_line("ask Answer -o 2x")


def test_max_tokens_must_be_positive() -> None:
    with pytest.raises(UsageError, match="positive whole number"):
        parse_line("ask Answer -n 0")


def test_run_without_check_flag() -> None:
    _, args = parse_line("run a b --no-check")
    assert args == RunArgs(targets=["a", "b"], workflow=None, check=False)
