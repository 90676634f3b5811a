"""The %coreason magics on a bare InteractiveShell, over scripted tiers (no model, no kernel)."""

from __future__ import annotations

import threading
import time
from importlib import metadata

import pytest
from coreason_runtime import BudgetExceededError, Controls, Coordinator, EventType
from coreason_runtime.events import WorkflowControlChanged
from coreason_runtime.tensor import ScriptedTier
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import TraitError

from coreason_lab import CoreasonMagics, ResultDisplay
from tests.lab.conftest import tiers


def line(ip: InteractiveShell, text: str) -> object:
    return ip.run_line_magic("coreason", text)


def cell(ip: InteractiveShell, first: str, body: str) -> object:
    return ip.run_cell_magic("coreason", first, body)


def until(predicate: object, timeout: float = 10.0) -> bool:
    """Synchronise with another thread (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


# --- extension and settings ----------------------------------------------------------------


def test_load_ext_registers_line_and_cell_magic(ip: InteractiveShell) -> None:
    assert "coreason" in ip.magics_manager.magics["line"]
    assert "coreason" in ip.magics_manager.magics["cell"]


def test_config_magic_sets_a_trait(ip: InteractiveShell, magics: CoreasonMagics) -> None:
    ip.run_line_magic("config", "CoreasonMagics.default_workflow = 'wf-9'")
    assert magics.default_workflow == "wf-9"


def test_rate_setting_rejects_zero(magics: CoreasonMagics) -> None:
    with pytest.raises(TraitError, match="max_updates_per_second"):
        magics.max_updates_per_second = 0


def test_line_is_not_interpolated(ip: InteractiveShell) -> None:
    ip.user_ns["wf"] = "real"
    with pytest.raises(UsageError, match=r"no budget for workflow '\{wf\}'"):
        line(ip, "budget {wf}")


def test_cell_body_on_a_line_verb_is_a_usage_error(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="takes no cell body"):
        cell(ip, "budget wf 10", "something")


def test_ask_as_line_magic_needs_a_body(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="needs a cell body"):
        line(ip, "ask Answer")


def test_help_lists_every_verb(ip: InteractiveShell) -> None:
    html = line(ip, "help").data  # type: ignore[attr-defined]
    for verb in ("ask", "budget", "thunk", "invariant", "run", "pause", "abort", "dashboard"):
        assert f"<code>{verb}</code>" in html


def test_help_for_unknown_verb_suggests(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="Did you mean 'thunk'"):
        line(ip, "help thunc")


def test_version_names_both_packages(ip: InteractiveShell) -> None:
    out = str(line(ip, "version"))
    assert f"coreason-lab {metadata.version('coreason-lab')}" in out
    assert f"coreason-runtime {metadata.version('coreason-runtime')}" in out


# --- budgets -------------------------------------------------------------------------------


def test_budget_sets_the_ceiling(ip: InteractiveShell, rt: Coordinator) -> None:
    line(ip, "budget wf-1 20000")
    assert rt.budgets.get("wf-1").ceiling == 20000


def test_budget_of_unknown_workflow_suggests_a_known_one(ip: InteractiveShell) -> None:
    line(ip, "budget wf-1 100")
    with pytest.raises(UsageError, match="Did you mean 'wf-1'"):
        line(ip, "budget wf-2")


def test_reset_zeroes_the_ledger_and_keeps_the_ceiling(
    ip: InteractiveShell, rt: Coordinator
) -> None:
    line(ip, "budget wf 1000")
    cell(ip, "ask Answer -w wf", "six times seven?")
    line(ip, "reset wf")
    led = rt.budgets.get("wf")
    assert (led.spent, led.ceiling) == (0.0, 1000.0)


def test_ledgers_survive_a_new_runtime_on_the_same_home(
    ip: InteractiveShell, rt: Coordinator
) -> None:
    line(ip, "budget wf 1000")
    cell(ip, "ask Answer -w wf", "six times seven?")
    spent = rt.budgets.spent("wf")
    with Coordinator(home=rt.home) as restarted:  # a kernel restarted mid-run
        assert restarted.budgets.spent("wf") == spent > 0


# --- ask -----------------------------------------------------------------------------------


def test_ask_puts_the_validated_value_in_the_namespace(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    out = cell(ip, "ask Answer -w wf -o result", "six times seven?")
    assert ip.user_ns["result"] == ip.user_ns["Answer"](value=42)
    assert isinstance(out, ResultDisplay) and out.result.tier == "local"


def test_ask_with_schema_defined_in_the_cell(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    cell(ip, "ask -w wf", "class Number(BaseModel):\n    value: int\n---\nsix times seven?")
    assert type(ip.user_ns["answer"]).__name__ == "Number"


def test_ask_unknown_schema_suggests_the_closest(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="Did you mean 'Answer'"):
        cell(ip, "ask Answr", "six times seven?")


def test_ask_with_a_non_schema_name_is_a_usage_error(ip: InteractiveShell) -> None:
    ip.user_ns["n"] = 3
    with pytest.raises(UsageError, match="is a int, not a pydantic model"):
        cell(ip, "ask n", "six times seven?")


def test_ask_unknown_tier_suggests(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="Did you mean 'local'"):
        cell(ip, "ask Answer -t locl", "six times seven?")


def test_ask_in_a_workflow_without_budget_says_how_to_set_one(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="%coreason budget nope 20000"):
        cell(ip, "ask Answer -w nope", "six times seven?")


def test_ask_over_budget_raises_and_leaves_the_namespace(ip: InteractiveShell) -> None:
    line(ip, "budget tiny 5")
    with pytest.raises(BudgetExceededError):
        cell(ip, "ask Answer -w tiny", "six times seven, please, with care?")
    assert "answer" not in ip.user_ns


def test_result_metadata_records_provenance(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    out = cell(ip, "ask Answer -w wf", "six times seven?")
    _, meta = out._repr_mimebundle_()  # type: ignore[attr-defined]
    assert {"tier", "model", "revision", "seed", "tokens_in", "tokens_out"} <= set(meta["coreason"])
    assert meta["coreason"]["model"] == "scripted"


def test_api_key_never_appears_in_a_displayed_result(
    ip: InteractiveShell, rt: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COREASON_ORACLE_API_KEY", "sk-test-SECRET-1234")
    tiers(rt, ScriptedTier("local", ['{"value": 1}'], model="proxy?key=sk-test-SECRET-1234"))
    line(ip, "budget wf 1000")
    out = cell(ip, "ask Answer -w wf", "one?")
    data, meta = out._repr_mimebundle_()  # type: ignore[attr-defined]
    assert "sk-test-SECRET-1234" not in repr(data) + repr(meta)


# --- background, pause, abort --------------------------------------------------------------


def _blocking_tier(started: threading.Event, release: threading.Event) -> ScriptedTier:
    def step(request: object) -> str:
        started.set()
        release.wait(10)
        return '{"value":   ' + " ".join(["7"] + [" "] * 0) + "}"

    return ScriptedTier("local", [step])


def test_background_ask_returns_a_handle_and_the_value_lands_later(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    handle = cell(ip, "ask Answer -w wf --background -o later", "six times seven?")
    assert handle.wait(10) == "done"  # type: ignore[attr-defined]
    assert ip.user_ns["later"].value == 42
    assert ip.user_ns["later_handle"] is handle


def test_pause_stops_a_running_request_until_resume(
    ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics
) -> None:
    started, release = threading.Event(), threading.Event()
    tiers(rt, _blocking_tier(started, release))
    line(ip, "budget wf 1000")
    handle = cell(ip, "ask Answer -w wf --background", "seven?")
    assert started.wait(10)
    line(ip, "pause wf")
    release.set()
    assert until(lambda: magics.controls.status("wf").waiting == 1)  # blocked at the next token
    assert handle.status == "paused" and not handle.future.done()  # type: ignore[attr-defined]
    line(ip, "resume wf")
    assert handle.wait(10) == "done"  # type: ignore[attr-defined]
    assert ip.user_ns["answer"].value == 7


def test_abort_stops_a_running_request_and_charges_only_what_was_used(
    ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics
) -> None:
    started, release = threading.Event(), threading.Event()
    tiers(rt, _blocking_tier(started, release))
    line(ip, "budget wf 1000")
    handle = cell(ip, "ask Answer -w wf --background", "seven?")
    assert started.wait(10)
    line(ip, "abort wf")
    release.set()
    assert handle.wait(10) == "aborted"  # type: ignore[attr-defined]
    led = rt.budgets.get("wf")
    assert led.tokens_out == 0 and led.reserved == 0 and "answer" not in ip.user_ns


def test_a_new_ask_after_an_abort_runs(
    ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics
) -> None:
    line(ip, "budget wf 1000")
    magics.controls.abort("wf")
    cell(ip, "ask Answer -w wf", "six times seven?")
    assert ip.user_ns["answer"].value == 42


def test_foreground_ask_in_a_paused_workflow_is_refused(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    line(ip, "pause wf")
    with pytest.raises(UsageError, match="is paused"):
        cell(ip, "ask Answer -w wf", "six times seven?")


def test_pause_of_unknown_workflow_suggests(ip: InteractiveShell) -> None:
    line(ip, "budget wf-1 1000")
    with pytest.raises(UsageError, match="Did you mean 'wf-1'"):
        line(ip, "pause wf-2")


def test_pause_publishes_an_event(ip: InteractiveShell, rt: Coordinator) -> None:
    line(ip, "budget wf 1000")
    line(ip, "preempt wf")
    event = rt.bus.history([EventType.WORKFLOW_PREEMPTED])[-1]
    assert event.workflow_id == "wf" and isinstance(event.data, WorkflowControlChanged)
    assert (event.data.state, event.data.previous) == ("preempted", "running")


# --- status and dashboard ------------------------------------------------------------------


def test_status_shows_ledgers_and_controls(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    line(ip, "pause wf")
    html = line(ip, "status").data  # type: ignore[attr-defined]
    assert "wf" in html and "paused" in html


def test_dashboard_budget_view_shows_the_workflow(ip: InteractiveShell) -> None:
    line(ip, "budget wf 1000")
    dash = line(ip, "dashboard")
    cell(ip, "ask Answer -w wf", "six times seven?")
    want = "<td>wf</td><td>1000</td><td>36</td>"
    deadline = time.monotonic() + 30  # the throttle's thread may still hold the last batch
    while True:
        dash.throttle.flush()  # type: ignore[attr-defined]
        table = dash.views["budget"].table.value  # type: ignore[attr-defined]
        if want in table or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert want in table


def test_dashboard_unknown_view_suggests(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="Did you mean 'dag'"):
        line(ip, "dashboard --views dga")


def test_reopening_the_dashboard_leaks_no_subscription(
    ip: InteractiveShell, rt: Coordinator
) -> None:
    line(ip, "dashboard")
    count = rt.bus.subscriber_count
    line(ip, "dashboard")
    line(ip, "dashboard")
    assert rt.bus.subscriber_count == count


def test_dashboard_button_intent_pauses_the_workflow(
    ip: InteractiveShell, magics: CoreasonMagics
) -> None:
    line(ip, "budget wf 1000")
    dash = line(ip, "dashboard -w wf")
    dash.intent("pause")  # type: ignore[attr-defined]
    assert magics.controls.state("wf") == "paused"
    assert "wf: paused" in dash.status.value  # type: ignore[attr-defined]


def test_dashboard_status_follows_workflow_events_from_any_origin(
    ip: InteractiveShell, rt: Coordinator, magics: CoreasonMagics
) -> None:
    line(ip, "budget wf 1000")
    dash = line(ip, "dashboard")
    line(ip, "preempt wf")
    Controls(rt.bus).pause("script-wf")  # another controller on the same bus (a script)
    dash.throttle.flush()  # type: ignore[attr-defined]
    assert "wf: preempted, script-wf: paused" in dash.status.value  # type: ignore[attr-defined]
    assert magics.controls.state("script-wf") == "running"  # known from the event alone
    line(ip, "resume wf")
    dash.throttle.flush()  # type: ignore[attr-defined]
    assert "wf: running" in dash.status.value  # type: ignore[attr-defined]


def test_show_dashboard_on_ask_opens_the_workflows_dashboard(
    ip: InteractiveShell, magics: CoreasonMagics
) -> None:
    ip.run_line_magic("config", "CoreasonMagics.show_dashboard_on_ask = True")
    line(ip, "budget wf 1000")
    cell(ip, "ask Answer -w wf", "six times seven?")
    assert magics.dashboard is not None and magics.dashboard.workflow == "wf"


def test_unload_closes_the_dashboard_and_keeps_the_ledgers(
    ip: InteractiveShell, rt: Coordinator
) -> None:
    import coreason_lab

    line(ip, "budget wf 1000")
    dash = line(ip, "dashboard")
    coreason_lab.unload_ipython_extension(ip)
    assert dash.throttle.closed and rt.budgets.get("wf").ceiling == 1000  # type: ignore[attr-defined]
    assert "coreason" not in ip.magics_manager.magics["line"]
    coreason_lab.load_ipython_extension(ip, runtime=rt)
