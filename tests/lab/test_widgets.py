"""Dashboard state folded from events, and the views rendering it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from coreason_runtime import Event, EventBus, EventType
from coreason_runtime.sched import SubgoalDAG, TaskSpec
from pydantic import ValidationError

from coreason_lab._widgets import (
    BudgetView,
    CacheState,
    DagState,
    DagView,
    DecodeState,
    DecodeView,
    WorkerState,
    WorkflowState,
    _views,
)


def ev(type_: EventType, /, wf: str | None = "wf", ts: float = 0.0, **fields: object) -> Event:
    """An event of ``type_`` whose payload is built from ``fields`` (all of them, typed)."""
    return Event(type=type_, workflow_id=wf, ts=ts, data=dict(fields))


def dag(*tasks: str | tuple[str, list[str]]) -> Event:
    """The scheduler's ``sched.dag_submitted`` for tasks given as ``id`` or ``(id, deps)``."""
    specs = [TaskSpec(id=t) if isinstance(t, str) else TaskSpec(id=t[0], deps=t[1]) for t in tasks]
    spec = SubgoalDAG(id="d", tasks=specs).model_dump(mode="json")
    return ev(EventType.DAG_SUBMITTED, dag_id="d", spec=spec)


def task(type_: EventType, name: str, /, ts: float = 0.0, **fields: object) -> Event:
    """A ``task.*`` event of DAG ``d``, with each type's own fields defaulted."""
    own: dict[EventType, dict[str, object]] = {
        EventType.TASK_STARTED: {"attempt": 1, "pid": None, "kind": "solver"},
        EventType.TASK_PREEMPTED: {"attempt": 1, "pid": None},
        EventType.TASK_RESUMED: {"attempt": 1},
        EventType.TASK_FINISHED: {"attempt": 1, "run_s": 1.0},
        EventType.TASK_ABORTED: {"reason": "plan changed"},
    }
    return ev(type_, ts=ts, dag_id="d", task=name, **{**own[type_], **fields})


def tokens(delta: str, n: int, total: int, tier: str = "local") -> Event:
    return ev(EventType.TOKENS, tier=tier, delta=delta, tokens_out=n, total_out=total)


def repaired(text: str) -> Event:
    return ev(
        EventType.SPAN_REPAIRED,
        session="s1",
        start=0,
        old_end=1,
        new_end=2,
        old_text="?",
        new_text=text,
        decoded_tokens=2,
        prefilled_tokens=0,
        candidates=1,
        accepted=True,
        reason="verifier",
    )


def control(kind: EventType, state: str, previous: str) -> Event:
    return ev(kind, state=state, previous=previous)


def test_dag_state_follows_task_events() -> None:
    s = DagState()
    s.apply(
        [
            dag("a", ("b", ["a"])),
            task(EventType.TASK_STARTED, "a"),
            task(EventType.TASK_FINISHED, "a"),
            task(EventType.TASK_STARTED, "b"),
            task(EventType.TASK_PREEMPTED, "b"),
        ]
    )
    assert {n: x.state for n, x in s.nodes.items()} == {"a": "done", "b": "preempted"}


def test_dag_state_places_notebook_steps_with_their_dependencies() -> None:
    s = DagState()
    s.apply(
        [
            ev(EventType.STEP_DECLARED, name="side", deps=[]),
            ev(EventType.STEP_DECLARED, name="area", deps=["side"]),
            ev(EventType.STEP_FORCED, name="area", summary="9", duration_s=0.25),
            ev(EventType.STEP_DECLARED, name="area", deps=["side"]),  # declared again: still done
        ]
    )
    area = s.nodes["area"]
    assert (area.deps, area.state, area.duration) == (["side"], "done", 0.25)
    assert s.nodes["side"].state == "pending"


def test_dag_state_reads_the_schedulers_subgoal_dag() -> None:
    s = DagState()
    s.apply([dag("lemma", ("proof", ["lemma"])), task(EventType.TASK_ABORTED, "proof")])
    assert s.nodes["proof"].deps == ["lemma"] and s.nodes["proof"].state == "aborted"


def test_decode_state_counts_local_and_oracle_tokens() -> None:
    s = DecodeState()
    s.apply(
        [
            tokens("a", 1, 1),
            tokens("bc", 2, 3),
            tokens("", 16, 16, tier="oracle"),  # a batch whose text the tier did not stream
            tokens(' "x"', 4, 20, tier="oracle"),
            tokens("d", 1, 1),  # a new attempt starts its own running total
        ]
    )
    assert s.tokens == 24 and "".join(t for t, _ in s.spans) == 'abc "x"d'


def test_decode_view_counts_an_oracle_tokens_batch() -> None:
    v = DecodeView()
    v.update([tokens('{"value": 3', 5, 5, tier="oracle")])
    assert "5 tokens" in v.html.value and "{&quot;value&quot;: 3" in v.html.value


def test_an_event_with_a_field_its_payload_lacks_cannot_be_built() -> None:
    with pytest.raises(ValidationError, match="tokens"):
        ev(EventType.TOKENS, tier="local", delta="a", tokens=4)


def test_critical_path_is_the_longest_chain_by_duration() -> None:
    s = DagState()
    s.apply(
        [
            dag("a", ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])),
            task(EventType.TASK_FINISHED, "a", run_s=1.0),
            task(EventType.TASK_FINISHED, "b", run_s=0.1),
            task(EventType.TASK_FINISHED, "c", run_s=5.0),
            task(EventType.TASK_FINISHED, "d", run_s=1.0),
        ]
    )
    assert s.critical_path() == ["a", "c", "d"]


def test_a_published_critical_path_wins() -> None:
    s = DagState()
    s.apply([dag("a", "b"), ev(EventType.CRITICAL_PATH, dag_id="d", path=["b"], expected_s=1.0)])
    assert s.critical_path() == ["b"]


def test_dag_state_caps_the_number_of_nodes() -> None:
    s = DagState(max_nodes=3)
    s.apply([task(EventType.TASK_STARTED, str(i)) for i in range(10)])
    assert len(s.nodes) == 3 and s.ignored == 7


def test_dag_view_colours_nodes_and_draws_the_critical_path() -> None:
    v = DagView()
    v.update([dag("a", ("b", ["a"])), task(EventType.TASK_STARTED, "b")])
    nodes, critical = v.fig.data[2], v.fig.data[1]
    assert list(nodes.text) == ["a", "b"]
    assert list(nodes.marker.color) == ["#b0b0b0", "#1f77b4"]
    assert [x for x in critical.x if x is not None] == [0.0, 1.0]


def test_cache_state_counts_hits_misses_and_ratio() -> None:
    lookup = {"key": "k", "kind": "integral"}
    hit = {**lookup, "cross_workflow": False, "admitted_by": "wf", "verifier": "sympy"}
    s = CacheState()
    s.apply(
        [
            ev(EventType.CACHE_HIT, **hit),
            ev(EventType.CACHE_MISS, **lookup, reason="absent"),
            ev(EventType.CACHE_HIT, **{**hit, "kind": "derivative"}),
            ev(EventType.PREFIX_REUSED, reused=30, prefill=4),
            ev(EventType.CACHE_EVICT, keys=["k1", "k2"], count=2),
        ]
    )
    assert (s.hits, s.misses, s.ratio, s.evicts) == (3, 1, 0.75, 2)
    assert s.by_cache == {"integral": [1, 1], "derivative": [1, 0], "prefix": [1, 0]}
    assert len(s.series) == 1


def test_cache_state_shows_kv_bytes_per_tier_and_the_block_hit_ratio() -> None:
    tiers = {"gpu": 0, "ram": 2048, "disk": 4096}
    read = {"session": None, "reason": "prefix", "tokens": 64, "blocks": 4, "absent": 0}
    s = CacheState()
    s.apply(
        [
            ev(EventType.KV_READ, **read, hits=3, misses=1, wait_ms=2.5, tiers=tiers),
            ev(
                EventType.KV_DEMOTED,
                blocks=2,
                bytes=1024,
                src="ram",
                dst="disk",
                reason="capacity",
                tiers={**tiers, "ram": 1024},
            ),
            ev(EventType.KV_FAULT, reason="checksum", detail="x.kvb", blocks=1, tiers=tiers),
            ev(
                EventType.KV_PREDICTED,
                session=None,
                hits=2,
                late=1,
                wasted=3,
                bytes=512,
                wait_ms=1.0,
                tiers=tiers,
            ),
        ]
    )
    assert (s.kv.hits, s.kv.misses, s.kv.ratio, s.kv.faults) == (3, 1, 0.75, 1)
    assert s.kv.predicted == [2, 1, 3]
    assert s.kv.tiers == tiers and s.kv.wait_ms == 2.5
    assert (s.hits, s.misses) == (0, 0)  # block reads are not cache lookups


def test_decode_state_marks_repairs_and_forced_thunks() -> None:
    s = DecodeState()
    s.apply(
        [
            tokens("d/dx x^2 = ", 6, 6),
            repaired("2x"),
            ev(
                EventType.THUNK_FORCED,
                session="s1",
                name="lemma",
                start=8,
                old_end=10,
                new_end=11,
                cost=5,
                expansion="True",
            ),
            ev(
                EventType.DECODE_INJECTED,
                session="s1",
                start=11,
                end=14,
                n_tokens=3,
                prefill_ms=2.0,
            ),
            tokens(" done", 1, 7),
        ]
    )
    assert list(s.spans) == [
        ("d/dx x^2 = ", "text"),
        ("2x", "repaired"),
        ("⟦lemma=True⟧", "thunk"),
        ("⟦+3 tokens⟧", "injected"),
        (" done", "text"),
    ]


def test_decode_state_marks_a_repair_where_it_happened() -> None:
    s = DecodeState()
    fixed = ev(
        EventType.SPAN_REPAIRED,
        session="s1",
        start=5,
        old_end=9,
        new_end=8,
        old_text=' "3x^2*ln(x)"',
        new_text=' "3*x**2"',
        decoded_tokens=6,
        prefilled_tokens=1,
        candidates=2,
        accepted=True,
        reason="derivative",
    )
    s.apply([tokens('{"d": "3x^2*ln(x)"}', 9, 9), fixed])
    assert list(s.spans) == [
        ('{"d":', "text"),
        (' "3x^2*ln(x)"', "replaced"),
        (' "3*x**2"', "repaired"),
        ("}", "text"),
    ]
    assert s.repairs == 1


def test_a_repair_that_changed_nothing_is_not_shown() -> None:
    s = DecodeState()
    same = ev(
        EventType.SPAN_REPAIRED,
        session="s1",
        start=0,
        old_end=1,
        new_end=1,
        old_text="x",
        new_text="x",
        decoded_tokens=4,
        prefilled_tokens=0,
        candidates=4,
        accepted=False,
        reason="derivative",
    )
    s.apply([tokens("x", 1, 1), same])
    assert list(s.spans) == [("x", "text")] and s.repairs == 0


def test_decode_state_follows_its_workflows_controls() -> None:
    s = DecodeState()
    s.apply([control(EventType.WORKFLOW_PAUSED, "paused", "running")])
    assert s.state == "paused"
    s.apply([control(EventType.WORKFLOW_RESUMED, "running", "paused")])
    assert s.state == "decoding"


def test_workflow_state_keeps_the_last_control_of_each_workflow() -> None:
    s = WorkflowState()
    s.apply(
        [
            control(EventType.WORKFLOW_PAUSED, "paused", "running"),
            control(EventType.WORKFLOW_ABORTED, "aborted", "paused"),
            tokens("x", 1, 1),
        ]
    )
    assert s.states == {"wf": "aborted"} and s.state("other") == "running"


def test_workflow_state_shows_a_request_suspended_at_its_ceiling_until_it_continues() -> None:
    bus = EventBus()
    s = WorkflowState()
    suspended = bus.emit(
        EventType.REQUEST_SUSPENDED,
        workflow_id="wf",
        request_id="r1",
        reason="ceiling",
        ceiling=100.0,
        spent=99.0,
    )
    s.apply([suspended])
    assert s.state("wf") == "suspended"
    s.apply([bus.emit(EventType.REQUEST_CONTINUED, workflow_id="wf", request_id="r1", by="top_up")])
    assert s.state("wf") == "running"


def test_worker_state_summarises_a_clusters_workers() -> None:
    bus = EventBus()
    s = WorkerState()
    beat = {"host": "h", "pid": 1, "task_queue": "q"}
    s.apply(
        [
            bus.emit(EventType.WORKER_STATUS, worker="w2", state="alive", running=2, **beat),
            bus.emit(EventType.WORKER_STATUS, worker="w1", state="alive", completed=5, **beat),
            bus.emit(EventType.WORKER_STATUS, worker="w2", state="left", **beat),
        ]
    )
    assert s.summary() == "w1 0 running, 5 done; w2 left"


def test_decode_state_keeps_only_the_last_characters() -> None:
    s = DecodeState(max_chars=10)
    s.apply([tokens("0123456789", 10, 10), repaired("abcd")])
    assert "".join(t for t, _ in s.spans) == "456789abcd" and s.chars == 10


def test_decode_view_highlights_repaired_spans() -> None:
    v = DecodeView()
    v.update([tokens("x", 1, 1), repaired("<y>")])
    assert "class='coreason-repaired'" in v.html.value and "&lt;y&gt;" in v.html.value


def budget_set(wf: str, ts: float, ceiling: float | None, spent: float = 0.0) -> Event:
    return ev(EventType.BUDGET_SET, wf=wf, ts=ts, ceiling=ceiling, spent=spent)


def budget_charged(wf: str, ts: float, spent: float, ceiling: float | None) -> Event:
    return ev(
        EventType.BUDGET_CHARGED,
        wf=wf,
        ts=ts,
        tier="local",
        tokens_in=10,
        tokens_out=80,
        cost=250.0,
        spent=spent,
        ceiling=ceiling,
        released=300.0,
    )


def _synced(fig: object) -> list[dict[str, object]]:
    """The trace state a newly drawn frontend view starts from (plotly's ``_widget_data``)."""
    return list(fig._widget_data)  # type: ignore[attr-defined]


def test_figures_publish_their_traces_as_synced_state(monkeypatch: object) -> None:
    """A view drawn later (a reopened tab, or one whose add_trace events arrived before plotly's
    frontend module had loaded) starts from the traces and values Python holds now."""
    monkeypatch.setattr(_views, "FIGURE_INTERVAL_S", 0.0)  # type: ignore[attr-defined]
    view = DagView()
    assert [t["name"] for t in _synced(view.fig)] == ["edges", "critical", "tasks"]
    view.update([dag("a", ("b", ["a"]))])
    assert list(_synced(view.fig)[2]["text"]) == ["a", "b"]

    v = BudgetView()
    v.update([budget_set("wf", 1.0, 1000.0)])
    v.update([budget_charged("wf", 2.0, 250.0, 1000.0), budget_set("wf2", 2.0, 50.0)])
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
    throttle = threading.Thread(target=v.update, args=([budget_set("wf", 1.0, 1000.0)],))
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
