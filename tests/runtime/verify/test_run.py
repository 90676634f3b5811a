"""Running verifiers: any callable returning failures; misbehaving ones are typed errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from coreason_runtime import RequestError, VerifierError, VerifierTimeoutError
from coreason_runtime import verifiers as V
from coreason_runtime.verify import Failure, VerifyPolicy, run_checks

VALUE = {"a": 1, "b": {"c": [1, 2]}}


def _run(*fns: object, timeout: float = 5.0) -> list[Failure]:
    policy = VerifyPolicy.of(list(fns))
    return run_checks(policy.checks, VALUE, timeout=timeout).failures


def test_a_callable_may_return_nothing_true_or_failures() -> None:
    assert _run(lambda v: None, lambda v: True, lambda v: []) == []
    (f,) = _run(lambda v: [("/b/c/1", "too big")])
    assert (f.pointer, f.message) == ("/b/c/1", "too big")
    assert _run(lambda v: Failure("a", "no"))[0].pointer == "/a"  # a bare top-level name


def test_false_and_value_error_fail_the_whole_value() -> None:
    def strict(value: object) -> None:
        raise ValueError("not this one")

    failures = _run(lambda v: False, strict)
    assert [f.pointer for f in failures] == ["", ""]
    assert failures[1].message == "not this one"


def test_a_verifier_that_raises_something_else_is_a_typed_error_naming_it() -> None:
    def broken(value: object) -> None:
        raise KeyError("oops")

    with pytest.raises(VerifierError, match="'test_a_verifier_that_raises") as info:
        _run(broken)
    assert "broken" in (info.value.verifier or "")


@pytest.mark.parametrize("garbage", [42, "all good", {"a": "x"}, [("a",)], [3]])
def test_a_verifier_returning_garbage_is_a_typed_error(garbage: object) -> None:
    with pytest.raises(VerifierError, match="returned"):
        _run(V.check(lambda v: garbage, name="junk"))


def test_a_failure_naming_a_missing_field_is_a_typed_error() -> None:
    with pytest.raises(VerifierError, match=r"'/nope'.*does not have") as info:
        _run(V.check(lambda v: [("nope", "wrong")], name="typo"))
    assert info.value.verifier == "typo"


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # let the abandoned verifier thread finish


def test_a_verifier_that_never_returns_times_out(gate: threading.Event) -> None:
    with pytest.raises(VerifierTimeoutError, match=r"'stuck' did not return within 0\.2 s"):
        _run(V.check(lambda v: gate.wait(), name="stuck"), timeout=0.2)


def test_something_that_is_not_a_verifier_is_refused() -> None:
    with pytest.raises(RequestError, match="must be callable"):
        VerifyPolicy.of([42])
    with pytest.raises(RequestError, match="names no verifier"):
        VerifyPolicy.of([])


def test_touching_runs_only_the_checks_reading_that_field() -> None:
    seen: list[str] = []
    reads_a = V.invariant(lambda v: seen.append("a") is None, blame="a")
    other = V.derivative(of="x", result="d")
    run_checks([reads_a, other], {"a": 1, "d": "1"}, timeout=5, touching="/a")
    assert seen == ["a"]  # the callable may read anything: it runs
