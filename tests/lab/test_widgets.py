"""Dashboard state folded from events, and the views rendering it."""

from __future__ import annotations

import threading
import time

import numpy as np
from coreason_runtime import Event, EventType

from coreason_lab._widgets import (
    BudgetView,
    CacheState,
    DagState,
    DagView,
    DecodeState,
    DecodeView,
    _views,
)


def ev(kind: EventType, wf: str | None = "wf", ts: float = 0.0, **data: object) -> Event:
    return Event(type=kind, workflow_id=wf, ts=ts, data=dict(data))


def test_dag_state_follows_task_events() -> None:
    s = DagState()
    s.apply(
        [
            ev(EventType.DAG_SUBMITTED, nodes=[{"id": "a"}, {"id": "b", "deps": ["a"]}]),
            ev(EventType.TASK_STARTED, task="a"),
            ev(EventType.TASK_FINISHED, task="a"),
            ev(EventType.TASK_STARTED, task="b"),
            ev(EventType.TASK_PREEMPTED, task="b"),
        ]
    )
    assert {n: x.state for n, x in s.nodes.items()} == {"a": "done", "b": "preempted"}


def test_dag_state_accepts_edges_and_other_field_names() -> None:
    s = DagState()
    s.apply(
        [
            ev(EventType.DAG_SUBMITTED, tasks=["x", "y"], edges=[["x", "y"]]),
            ev(EventType.TASK_ABORTED, task_id="y"),
        ]
    )
    assert s.nodes["y"].deps == ["x"] and s.nodes["y"].state == "aborted"


def test_dag_state_reads_the_schedulers_subgoal_dag() -> None:
    s = DagState()
    s.apply(
        [
            ev(
                EventType.DAG_SUBMITTED,
                dag_id="d",
                spec={
                    "id": "d",
                    "tasks": [{"id": "lemma", "deps": []}, {"id": "proof", "deps": ["lemma"]}],
                },
            )
        ]
    )
    assert s.nodes["proof"].deps == ["lemma"]


def test_decode_state_counts_tokens_from_running_totals() -> None:
    s = DecodeState()
    s.apply(
        [
            ev(EventType.TOKENS, delta="a", tokens=4),
            ev(EventType.TOKENS, delta="b", tokens=9),
            ev(EventType.TOKENS, delta="c", tokens=2),
        ]
    )
    assert s.tokens == 11 and "".join(t for t, _ in s.spans) == "abc"


def test_dag_state_ignores_payloads_it_cannot_read() -> None:
    s = DagState()
    s.apply(
        [
            ev(EventType.TASK_STARTED, something="else"),
            ev(EventType.DAG_SUBMITTED, nodes="not a list", edges=[1, 2, [3]]),
        ]
    )
    assert s.nodes == {} and s.ignored == 1


def test_critical_path_is_the_longest_chain_by_duration() -> None:
    s = DagState()
    s.apply(
        [
            ev(
                EventType.DAG_SUBMITTED,
                nodes=[
                    {"id": "a"},
                    {"id": "b", "deps": ["a"]},
                    {"id": "c", "deps": ["a"]},
                    {"id": "d", "deps": ["b", "c"]},
                ],
            ),
            ev(EventType.TASK_FINISHED, task="a", duration_s=1.0),
            ev(EventType.TASK_FINISHED, task="b", duration_s=0.1),
            ev(EventType.TASK_FINISHED, task="c", duration_s=5.0),
            ev(EventType.TASK_FINISHED, task="d", duration_s=1.0),
        ]
    )
    assert s.critical_path() == ["a", "c", "d"]


def test_a_published_critical_path_wins() -> None:
    s = DagState()
    s.apply(
        [ev(EventType.DAG_SUBMITTED, nodes=["a", "b"]), ev(EventType.CRITICAL_PATH, path=["b"])]
    )
    assert s.critical_path() == ["b"]


def test_dag_state_caps_the_number_of_nodes() -> None:
    s = DagState(max_nodes=3)
    s.apply([ev(EventType.TASK_STARTED, task=str(i)) for i in range(10)])
    assert len(s.nodes) == 3


def test_dag_view_colours_nodes_and_draws_the_critical_path() -> None:
    v = DagView()
    v.update(
        [
            ev(EventType.DAG_SUBMITTED, nodes=[{"id": "a"}, {"id": "b", "deps": ["a"]}]),
            ev(EventType.TASK_STARTED, task="b"),
        ]
    )
    nodes, critical = v.fig.data[2], v.fig.data[1]
    assert list(nodes.text) == ["a", "b"]
    assert list(nodes.marker.color) == ["#b0b0b0", "#1f77b4"]
    assert [x for x in critical.x if x is not None] == [0.0, 1.0]


def test_cache_state_counts_hits_misses_and_ratio() -> None:
    s = CacheState()
    s.apply(
        [
            ev(EventType.CACHE_HIT, cache="subgoal"),
            ev(EventType.CACHE_MISS, cache="subgoal"),
            ev(EventType.CACHE_HIT, cache="kv"),
            ev(EventType.PREFIX_REUSED),
        ]
    )
    assert (s.hits, s.misses, s.ratio) == (3, 1, 0.75)
    assert s.by_cache["subgoal"] == [1, 1] and len(s.series) == 1


def test_decode_state_marks_repairs_and_forced_thunks() -> None:
    s = DecodeState()
    s.apply(
        [
            ev(EventType.TOKENS, text="d/dx x^2 = "),
            ev(EventType.SPAN_REPAIRED, text="2x"),
            ev(EventType.THUNK_FORCED, name="lemma", summary="True"),
            ev(EventType.TOKENS, text=" done"),
        ]
    )
    assert list(s.spans) == [
        ("d/dx x^2 = ", "text"),
        ("2x", "repaired"),
        ("⟦lemma=True⟧", "thunk"),
        (" done", "text"),
    ]


def test_decode_state_keeps_only_the_last_characters() -> None:
    s = DecodeState(max_chars=10)
    s.apply([ev(EventType.TOKENS, text="0123456789"), ev(EventType.SPAN_REPAIRED, text="abcd")])
    assert "".join(t for t, _ in s.spans) == "456789abcd" and s.chars == 10


def test_decode_view_highlights_repaired_spans() -> None:
    v = DecodeView()
    v.update([ev(EventType.TOKENS, text="x"), ev(EventType.SPAN_REPAIRED, text="<y>")])
    assert "class='coreason-repaired'" in v.html.value and "&lt;y&gt;" in v.html.value


def _synced(fig: object) -> list[dict[str, object]]:
    """The trace state a newly drawn frontend view starts from (plotly's ``_widget_data``)."""
    return list(fig._widget_data)  # type: ignore[attr-defined]


def test_figures_publish_their_traces_as_synced_state(monkeypatch: object) -> None:
    """A view drawn later (a reopened tab, or one whose add_trace events arrived before plotly's
    frontend module had loaded) starts from the traces and values Python holds now."""
    monkeypatch.setattr(_views, "FIGURE_INTERVAL_S", 0.0)  # type: ignore[attr-defined]
    dag = DagView()
    assert [t["name"] for t in _synced(dag.fig)] == ["edges", "critical", "tasks"]
    dag.update([ev(EventType.DAG_SUBMITTED, nodes=[{"id": "a"}, {"id": "b", "deps": ["a"]}])])
    assert list(_synced(dag.fig)[2]["text"]) == ["a", "b"]

    v = BudgetView()
    v.update([ev(EventType.BUDGET_SET, ts=1.0, ceiling=1000.0, spent=0.0)])
    v.update(
        [
            ev(EventType.BUDGET_CHARGED, ts=2.0, spent=250.0),
            ev(EventType.BUDGET_SET, wf="wf2", ts=2.0, ceiling=50.0, spent=0.0),
        ]
    )
    traces = _synced(v.burn)
    assert [t["name"] for t in traces] == ["C wf", "Ω wf", "C wf2", "Ω wf2"]
    np.testing.assert_array_equal(traces[0]["y"], [0.0, 250.0])
    np.testing.assert_array_equal(traces[3]["y"], [50.0, 50.0])
    assert traces[0]["y"] is not v.burn.data[0].y  # a copy: later redraws do not alias it


def test_a_trace_added_while_the_frontend_updates_the_figure_is_still_sent() -> None:
    """ipywidgets applies a frontend update inside ``hold_trait_notifications()``, which holds
    the whole object's notifications whatever thread changes it; an ``add_trace`` from the
    throttle thread in that window was folded into its reset to ``None`` and never sent."""
    v = BudgetView()
    sent: list[dict[str, object]] = []
    v.burn._send = lambda msg, buffers=None: sent.append(msg)  # type: ignore[method-assign]
    inside, release = threading.Event(), threading.Event()

    def slow_from_json(value: object, widget: object) -> object:  # the frontend's update
        inside.set()
        release.wait(5)
        return value

    v.burn._trait_from_json = slow_from_json  # type: ignore[method-assign]
    frontend = threading.Thread(target=v.burn.set_state, args=({"_last_layout_edit_id": 0},))
    frontend.start()
    assert inside.wait(5)
    throttle = threading.Thread(
        target=v.update, args=([ev(EventType.BUDGET_SET, ts=1.0, ceiling=1000.0, spent=0.0)],)
    )
    throttle.start()
    time.sleep(0.2)  # the throttle thread is now waiting for the figure, or (unlocked) done
    release.set()
    frontend.join(5)
    throttle.join(5)
    added = [
        m["state"]["_py2js_addTraces"]
        for m in sent
        if m.get("method") == "update" and m["state"].get("_py2js_addTraces")
    ]
    assert [t["name"] for msg in added for t in msg["trace_data"]] == ["C wf", "Ω wf"]
