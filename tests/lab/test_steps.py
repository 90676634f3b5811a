"""Thunks, invariants and %coreason run."""

from __future__ import annotations

import concurrent.futures

import pytest
from coreason_runtime import Coordinator, EventType, WorkflowAbortedError
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from coreason_lab import CellInvariantViolation, CellThunk, CoreasonMagics


def test_a_thunk_body_runs_only_when_forced(ip: InteractiveShell) -> None:
    ip.user_ns["calls"] = []
    ip.run_cell_magic("coreason", "thunk step", "calls.append(1)\n6 * 7")
    assert ip.user_ns["calls"] == [] and not ip.user_ns["step"].forced
    assert ip.user_ns["step"].value == 42
    assert ip.user_ns["step"].force() == 42 and ip.user_ns["calls"] == [1]


def test_thunk_events_are_published(ip: InteractiveShell, rt: Coordinator) -> None:
    ip.run_cell_magic("coreason", "thunk step", "1")
    ip.user_ns["step"].force()
    events = rt.bus.history(["step"])
    assert [e.type for e in events] == [EventType.STEP_DECLARED, EventType.STEP_FORCED]
    assert [e.data.name for e in events] == ["step", "step"]


def test_thunk_dependencies_are_detected_and_forced_first(ip: InteractiveShell) -> None:
    ip.run_cell_magic("coreason", "thunk side", "3")
    ip.run_cell_magic("coreason", "thunk area", "side ** 2")
    area: CellThunk = ip.user_ns["area"]
    assert area.deps == ["side"] and area.value == 9 and ip.user_ns["side"].forced


def test_thunk_after_an_unknown_step_suggests(ip: InteractiveShell) -> None:
    ip.run_cell_magic("coreason", "thunk side", "3")
    with pytest.raises(UsageError, match="Did you mean 'side'"):
        ip.run_cell_magic("coreason", "thunk area --after sid", "1")


def test_thunk_with_a_syntax_error_is_refused_at_declaration(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="does not parse"):
        ip.run_cell_magic("coreason", "thunk bad", "1 +")
    assert "bad" not in ip.user_ns


def test_repr_of_a_thunk_does_not_force_it(ip: InteractiveShell) -> None:
    ip.run_cell_magic("coreason", "thunk step", "1")
    assert "not forced" in repr(ip.user_ns["step"]) and not ip.user_ns["step"].forced


def test_run_forces_steps_in_dependency_order(ip: InteractiveShell, rt: Coordinator) -> None:
    ip.run_cell_magic("coreason", "thunk c", "a + b")  # declared before its dependencies
    ip.run_cell_magic("coreason", "thunk a", "1")
    ip.run_cell_magic("coreason", "thunk b", "a + 1")
    report = ip.run_line_magic("coreason", "run c")
    started = [e.data.task for e in rt.bus.history([EventType.TASK_STARTED])]
    assert started == ["a", "b", "c"] and ip.user_ns["c"].value == 3
    assert report.critical_path == ["a", "b", "c"]  # type: ignore[attr-defined]


def test_run_of_a_cycle_names_it(ip: InteractiveShell) -> None:
    ip.run_cell_magic("coreason", "thunk a", "1")
    ip.run_cell_magic("coreason", "thunk b", "a")
    ip.run_cell_magic("coreason", "thunk a", "b")
    with pytest.raises(UsageError, match="cycle: a -> b -> a"):
        ip.run_line_magic("coreason", "run a")


def test_a_failing_step_aborts_the_rest(ip: InteractiveShell, rt: Coordinator) -> None:
    ip.run_cell_magic("coreason", "thunk a", "1 / 0")
    ip.run_cell_magic("coreason", "thunk b", "a + 1")
    with pytest.raises(ZeroDivisionError):
        ip.run_line_magic("coreason", "run")
    assert [e.data.task for e in rt.bus.history([EventType.TASK_ABORTED])] == ["b"]


def test_run_waits_while_paused_and_stops_when_aborted(
    ip: InteractiveShell, magics: CoreasonMagics
) -> None:
    ip.run_cell_magic("coreason", "thunk a", "1")
    ip.run_cell_magic("coreason", "thunk b", "a + 1")
    runner = magics._runner()
    magics.controls.pause("default")
    held = runner.submit(runner.order(["b"]), "default")
    with pytest.raises(concurrent.futures.TimeoutError):
        held.result(timeout=0.5)  # held at its first step's checkpoint
    assert not ip.user_ns["a"].forced
    magics.controls.resume("default")
    assert held.result(timeout=30).status == "succeeded" and ip.user_ns["b"].value == 2

    ip.run_cell_magic("coreason", "thunk c", "2")
    ip.run_cell_magic("coreason", "thunk d", "c * 3")
    magics.controls.pause("default")
    stopped = runner.submit(runner.order(["d"]), "default")
    with pytest.raises(concurrent.futures.TimeoutError):
        stopped.result(timeout=0.5)
    magics.controls.abort("default")
    with pytest.raises(WorkflowAbortedError):
        stopped.result(timeout=30)
    assert not ip.user_ns["c"].forced and not ip.user_ns["d"].forced
    ip.run_line_magic("coreason", "run d")  # an abort stops the run it reached, not the next
    assert ip.user_ns["d"].value == 6


def test_run_with_no_steps_says_how_to_declare_one(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="%%coreason thunk NAME"):
        ip.run_line_magic("coreason", "run")


def test_violated_invariant_raises_and_is_published(ip: InteractiveShell, rt: Coordinator) -> None:
    ip.run_cell_magic("coreason", "thunk energy", "-1.0")
    ip.run_cell_magic("coreason", "invariant positive", "energy >= 0")
    with pytest.raises(CellInvariantViolation, match="energy >= 0 is false"):
        ip.run_line_magic("coreason", "run")
    event = rt.bus.history([EventType.STEP_INVARIANT_VIOLATED])[-1]
    assert event.data.invariant == "positive" and "energy >= 0" in event.data.detail


def test_invariant_on_an_unforced_step_is_undecided(ip: InteractiveShell) -> None:
    ip.run_cell_magic("coreason", "thunk energy", "-1.0")
    ip.run_cell_magic("coreason", "invariant positive", "energy >= 0")
    report = ip.run_line_magic("coreason", "check")
    assert report.results[0].ok is None  # type: ignore[attr-defined]


def test_unit_invariant_accepts_compatible_units(ip: InteractiveShell) -> None:
    ip.run_cell("import pint\nu = pint.get_application_registry()\nspeed = 3 * u.km / u.hour")
    ip.run_line_magic("coreason", "invariant speed --unit m/s")
    assert ip.run_line_magic("coreason", "check speed").ok  # type: ignore[attr-defined]


def test_unit_invariant_rejects_wrong_dimensions(ip: InteractiveShell) -> None:
    ip.run_cell("import pint\nu = pint.get_application_registry()\nspeed = 3 * u.kg")
    ip.run_line_magic("coreason", "invariant speed --unit m/s")
    with pytest.raises(CellInvariantViolation, match="not compatible with m/s"):
        ip.run_line_magic("coreason", "check")


def test_unknown_unit_is_a_usage_error(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="not a unit pint knows"):
        ip.run_line_magic("coreason", "invariant speed --unit furlongz")


def test_invariant_that_is_not_an_expression_is_a_usage_error(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="is not an expression"):
        ip.run_cell_magic("coreason", "invariant bad", "x = 1")


def test_invariant_predicate_serves_simulations(
    magics: CoreasonMagics, ip: InteractiveShell
) -> None:
    ip.run_cell_magic("coreason", "invariant mass", "m > 0")
    predicate = magics.invariants["mass"].predicate()
    assert predicate({"m": 1.0}) and not predicate({"m": -1.0})


def test_reset_steps_forgets_thunks_and_invariants(
    ip: InteractiveShell, magics: CoreasonMagics
) -> None:
    ip.run_cell_magic("coreason", "thunk a", "1")
    ip.run_cell_magic("coreason", "invariant i", "True")
    ip.run_line_magic("coreason", "reset --steps")
    assert magics.thunks == {} and magics.invariants == {}
