"""The routing view and `%coreason tiers`: the matrix, each request's plan, refusals."""

from __future__ import annotations

import time

from coreason_runtime import Coordinator, Event, EventType
from coreason_runtime.tensor import ScriptedTier
from IPython.core.interactiveshell import InteractiveShell

from coreason_lab._widgets import RouteState, RouteView, tiers_html
from tests.lab.conftest import tiers


def ev(
    type_: EventType, /, wf: str | None = "wf", source: str | None = None, **fields: object
) -> Event:
    return Event(type=type_, workflow_id=wf, source=source, data=dict(fields))


def _decided(reason: str = "best r/p first", tiers_: list[str] | None = None) -> Event:
    return ev(
        EventType.ROUTE_DECIDED,
        policy="learned",
        family="calculus",
        tiers=tiers_ or ["local", "oracle"],
        skipped={},
        reason=reason,
        estimates={},
    )


def _refused(name: str = "escalate local->oracle", source: str = "route.gate") -> Event:
    return ev(
        EventType.WHATIF_REFUSED,
        source=source,
        name=name,
        allowed=False,
        reason="gain/cost 0.4 < min_ratio 1",
        predicted_gain=0.4,
        predicted_cost=1.0,
        dry_run_s=0.0,
        region=None,
        detail={},
    )


def test_route_state_pairs_each_plan_with_who_answered() -> None:
    state = RouteState()
    state.apply(
        [
            _decided("first"),
            ev(EventType.REQUEST_FINISHED, tier="oracle", cost=120.0, attempts=4),
            _decided("second"),
            _refused(),
            _refused("span /d -> oracle"),
            _refused("escalate 32->64", source="sim"),  # a simulator's own gate: not routing
            ev(
                EventType.TIER_HEALTH,
                wf=None,
                tier="local",
                state="degraded",
                previous="ok",
                reason="r",
            ),
        ]
    )
    first, second = state.choices
    assert (first.reason, first.answered_by, first.cost) == ("first", "oracle", 120.0)
    assert second.answered_by is None
    assert [r[2] for r in state.refusals] == ["escalate local->oracle", "span /d -> oracle"]
    assert state.health == {"local": "degraded"}


def test_route_view_renders_choices_refusals_and_the_matrix(rt: Coordinator) -> None:
    view = RouteView(rt)
    assert "tier matrix" in view.matrix.value and "<td>local</td>" in view.matrix.value
    view.update([_decided("cheap first <b>"), _refused()])
    assert "cheap first &lt;b&gt;" in view.choices.value  # reasons are escaped
    assert "local → oracle" in view.choices.value
    assert "refused escalations</b> (1)" in view.refusals.value
    assert "gain/cost 0.4" in view.refusals.value


def test_tiers_html_marks_degraded_tiers() -> None:
    row = {
        "name": "local",
        "kind": "local",
        "model": "m",
        "weight_in": 1.0,
        "weight_out": 3.0,
        "k_model": 1.0,
        "health": "degraded",
        "requests": 4,
        "success_rate": 0.25,
        "mean_cost": 80.0,
    }
    out = tiers_html([row], "learned")
    assert "color:#d62728'>degraded" in out and "25%" in out and "1·T_in + 3·T_out" in out


def test_tiers_magic_shows_the_matrix_with_its_history(
    ip: InteractiveShell, rt: Coordinator
) -> None:
    tiers(rt, ScriptedTier("local", ['{"value": 42}'], repeat_last=True))
    ip.run_line_magic("coreason", "budget wf 10000")
    ip.run_cell_magic("coreason", "ask Answer -w wf", "six times seven?")
    html = ip.run_line_magic("coreason", "tiers").data  # type: ignore[attr-defined]
    assert "policy <code>learned</code>" in html
    assert "<td>local</td>" in html and "<td>100%</td>" in html


def test_the_dashboard_has_a_routing_tab(ip: InteractiveShell, rt: Coordinator) -> None:
    ip.run_line_magic("coreason", "budget wf 10000")
    dash = ip.run_line_magic("coreason", "dashboard --views route")
    ip.run_cell_magic("coreason", "ask Answer -w wf", "six times seven?")
    view = dash.views["route"]  # type: ignore[attr-defined]
    # the plan and who answered arrive in separate events: the throttle's thread may still
    # hold the batch with request.finished after the one with route.decided was drawn
    answered = "<td>wf</td><td>other</td><td>local</td><td>local</td>"
    deadline = time.monotonic() + 30
    while answered not in view.choices.value and time.monotonic() < deadline:
        dash.throttle.flush()  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert answered in view.choices.value
