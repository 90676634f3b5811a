"""Running a request's verifiers on a value: bounded in time, their answers checked.

A verifier is judged as well as the value: one that raises something other than
``ValueError``, returns something that is not a list of failures, names a field the value
does not have, or does not return within its time limit is a :class:`VerifierError` naming
it — a bug to fix, not a wrong answer to repair.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from coreason_runtime._exceptions import VerifierError, VerifierTimeoutError
from coreason_runtime.verify._json import has_pointer
from coreason_runtime.verify._types import Check, CheckResult, Failure, Verdict, as_value

__all__ = ["CallableCheck", "run_checks"]

T = TypeVar("T")


class CallableCheck(Check):
    """A plain callable as a :class:`Check`: ``fn(value)`` returns failures.

    Accepted returns: ``None`` or ``True`` (passed), ``False`` (the whole value fails), one
    :class:`Failure`, a ``(pointer, message)`` pair, or a list of either. ``ValueError``
    fails the whole value with its message.
    """

    def __init__(self, fn: Callable[[Any], Any], name: str | None = None) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__qualname__", type(fn).__name__))

    def check(self, value: Any) -> CheckResult:
        returned = self.fn(value)
        return CheckResult(tuple(_failures(returned, self.name)), "callable")

    def __repr__(self) -> str:
        return f"CallableCheck({self.name})"


def _garbage(name: str, returned: Any) -> VerifierError:
    msg = (
        f"verifier {name!r} returned {type(returned).__name__} {returned!r:.80}; a verifier "
        "returns None/True (passed), False, or failures: Failure(pointer, message) or "
        "(pointer, message) pairs"
    )
    return VerifierError(msg, verifier=name)


def _one(item: Any, name: str) -> Failure:
    if isinstance(item, Failure):
        return item
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], str)
    ):
        return Failure(item[0], item[1], name, method="callable")
    raise _garbage(name, item)


def _failures(returned: Any, name: str) -> list[Failure]:
    if returned is None or returned is True:
        return []
    if returned is False:
        return [Failure("", "the verifier returned False", name, method="callable")]
    if isinstance(returned, (Failure, tuple)):
        return [_one(returned, name)]
    if isinstance(returned, (str, bytes, dict)) or not isinstance(returned, Iterable):
        raise _garbage(name, returned)
    return [_one(item, name) for item in returned]


def bounded(fn: Callable[[], T], timeout: float, name: str) -> T:
    """``fn()`` on a daemon thread, waited for at most ``timeout`` seconds.

    A Python thread cannot be killed: past the limit the call is abandoned (it keeps running
    in the background until it returns) and :class:`VerifierTimeoutError` is raised.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller's thread, re-raised there
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name=f"coreason-verify:{name}", daemon=True).start()
    if not done.wait(timeout):
        msg = f"verifier {name!r} did not return within {timeout:g} s; it was abandoned"
        raise VerifierTimeoutError(msg, verifier=name)
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def _run_one(check: Check, value: Any, json_value: Any, timeout: float) -> CheckResult:
    name = check.name
    try:
        result = bounded(lambda: check.check(value), timeout, name)
    except VerifierError:
        raise
    except ValueError as e:
        return CheckResult((Failure("", str(e) or type(e).__name__, name, method="raised"),))
    except Exception as e:
        msg = f"verifier {name!r} raised {type(e).__name__}: {e}"
        raise VerifierError(msg, verifier=name) from e
    if not isinstance(result, CheckResult):
        raise _garbage(name, result)
    out = []
    for f in result.failures:
        if not isinstance(f, Failure):
            raise _garbage(name, f)
        if not has_pointer(json_value, f.pointer):
            msg = f"verifier {name!r} names field {f.pointer!r}, which the value does not have"
            raise VerifierError(msg, verifier=name)
        out.append(f if f.verifier else Failure(f.pointer, f.message, name, f.expected, f.method))
    return CheckResult(tuple(out), result.method)


def run_checks(
    checks: Sequence[Check],
    value: Any,
    *,
    timeout: float,
    touching: str | None = None,
) -> Verdict:
    """Every check's findings on ``value`` (a validated value: pydantic instance or JSON).

    ``touching`` runs only the checks that read that field (or may read any).

    Raises
    ------
    VerifierError
        A verifier raised (not ``ValueError``), returned garbage or named a missing field.
    VerifierTimeoutError
        A verifier took longer than ``timeout``.
    """
    json_value = as_value(value)
    verdict = Verdict()
    for check in checks:
        reads = check.reads
        if touching is not None and reads is not None and touching not in reads:
            continue
        result = _run_one(check, value, json_value, timeout)
        verdict.failures.extend(result.failures)
        if result.method:
            verdict.methods[check.name] = result.method
    return verdict
