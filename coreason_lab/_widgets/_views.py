"""The four live views: each renders its state object into widgets, in one batched update."""

from __future__ import annotations

import copy
import functools
import html
import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as W
import numpy as np
from coreason_runtime import Event, EventType

from coreason_lab._widgets._state import (
    BudgetState,
    CacheState,
    DagState,
    DecodeState,
    KVTiersState,
)

__all__ = ["BudgetView", "CacheView", "DagView", "DecodeView", "View"]

STATE_COLOURS = {
    "pending": "#b0b0b0",
    "running": "#1f77b4",
    "done": "#2ca02c",
    "failed": "#d62728",
    "preempted": "#ff7f0e",
    "aborted": "#7f0000",
}
SPAN_CSS = (
    "<style>.coreason-repaired{background:#ffe08a;text-decoration:underline wavy #c77c00}"
    ".coreason-replaced{text-decoration:line-through;opacity:0.55}"
    ".coreason-injected{background:#d7ecff}"
    ".coreason-thunk{background:#d9f7d9;font-weight:bold}</style>"
)
MAX_SPANS = 300  # the HTML is resent whole on each redraw: keep it small


@functools.cache
def _live_figure() -> type:
    """plotly's ``FigureWidget``, with its frontend updates and our redraws kept apart.

    A figure's events to the frontend (``add_trace``, restyles) are transient traitlets, set
    and at once reset to ``None``. Its frontend answers each drawn view and each edit with a
    trace or layout delta, which ipywidgets applies in ``set_state`` on the thread that
    handles comm messages (a subshell, while a cell runs) inside
    ``hold_trait_notifications()``, and that holds the notifications of the whole object,
    whichever thread changes it. An ``add_trace`` from the throttle thread that landed in
    that window was folded into its reset and never sent: after *Run All* the budget plot
    stayed empty. ``set_state`` here takes the figure's lock, and every redraw holds it.
    """
    import plotly.graph_objects as go

    class LiveFigure(go.FigureWidget):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._edit_lock = threading.RLock()
            super().__init__(*args, **kwargs)

        def set_state(self, sync_data: Any) -> None:
            with self._edit_lock:
                super().set_state(sync_data)

    return LiveFigure


def _figure(title: str, *traces: dict[str, Any], height: int = 260, **layout: Any) -> Any:
    # Traces known up front and the layout go in the constructor, so they are part of the
    # state the widget opens with (adding them afterwards would be transient events).
    return _live_figure()(
        data=list(traces),
        layout={
            "title": title,
            "height": height,
            "margin": {"l": 40, "r": 10, "t": 36, "b": 30},
            "legend": {"orientation": "h"},
            **layout,
        },
    )


def _publish(fig: Any) -> None:
    """Make the figure's synced trace state the traces Python holds now (under its lock).

    plotly keeps ``_widget_data``, the state a view is first drawn from, as it was at
    construction or at the figure's own ``_repr_mimebundle_``, which is never called for a
    figure inside a Box; later traces and values reach only the views already drawn, as
    events. A view drawn afterwards, in a reopened notebook or a reloaded tab, showed every
    dashboard plot empty. Setting ``_widget_data`` after each redraw gives such views the
    current traces. Plotly's frontend ignores changes to it in views already drawn, so
    nothing is drawn twice; it costs one more message per redraw, at most one a second.
    """
    fig._widget_data = copy.deepcopy(fig._data)


@contextmanager
def _redraw(fig: Any) -> Iterator[None]:
    """Edit ``fig`` under its lock in one ``batch_update``, then publish the result."""
    with fig._edit_lock:
        with fig.batch_update():
            yield
        _publish(fig)


FIGURE_INTERVAL_S = 1.0  # plots redraw ≤ 1/s; tables and text follow every batch (≤ 10/s)
LEDGER_INTERVAL_S = 0.5  # the budget view reads the ledger store ≤ 2/s


class View:
    """A view: ``area`` says which events it wants; ``update`` folds them and re-renders.

    Figures are the expensive part (plotly validates every array it is given), so a view
    redraws its plots at most every ``FIGURE_INTERVAL_S`` and marks itself ``stale`` when it
    skipped one; the dashboard then calls :meth:`render` once more after the burst.
    """

    areas: tuple[str, ...] = ()
    title = ""
    widget: W.Widget
    stale = False
    _figure_at = -1e9

    def _figure_due(self) -> bool:
        now = time.monotonic()
        if now - self._figure_at < FIGURE_INTERVAL_S:
            self.stale = True
            return False
        self._figure_at, self.stale = now, False
        return True

    def render(self) -> None:
        raise NotImplementedError

    def update(self, events: Sequence[Event], runtime: Any = None) -> None:
        raise NotImplementedError


class BudgetView(View):
    """Budget burn-down per workflow: C against Ω over time, C per tier, tokens in and out."""

    areas = ("budget", "request")
    title = "Budget"

    def __init__(self, max_points: int = 500, workflow: str | None = None) -> None:
        self.state = BudgetState(max_points)
        self.workflow = workflow
        self.burn = _figure("C spent against Ω", xaxis_title="time (s)", yaxis_title="C")
        self.tiers = _figure("C per tier", barmode="stack")
        self.table = W.HTML()
        self._burn_traces: dict[str, int] = {}
        self._tier_traces: dict[str, int] = {}
        self._last: dict[str, Any] = {}
        self._t0 = time.time()
        self._ledgers_at = -1e9
        self._known: set[str] = set()
        self.widget = W.VBox([self.table, W.HBox([self.burn, self.tiers])])

    def update(self, events: Sequence[Event], runtime: Any = None) -> None:
        self.state.apply(events)
        now = time.monotonic()
        known = set(self.state.flows)
        # The ledgers are the truth (events may be dropped) but reading them is a store query:
        # at most every LEDGER_INTERVAL_S, or at once when a workflow appears or is reset.
        due = (
            now - self._ledgers_at >= LEDGER_INTERVAL_S
            or known != self._known
            or any(e.type in (EventType.BUDGET_SET, EventType.BUDGET_RESET) for e in events)
        )
        if runtime is not None and due:
            self._ledgers_at, self._known = now, known
            if self.workflow is not None:
                led = runtime.budgets.get(self.workflow)
                ledgers = [led] if led is not None else []
            else:
                ledgers = runtime.budgets.workflows()
            self.state.refresh(ledgers)
        self.render()

    def render(self) -> None:
        flows = [
            f
            for f in self.state.flows.values()
            if self.workflow is None or f.workflow_id == self.workflow
        ]
        with self.burn._edit_lock, self.tiers._edit_lock:
            self._add_traces(flows)
        # Only what changed is sent, as numpy arrays: plotly validates plain lists element by
        # element, which would cost the kernel more than the decode it is watching.
        burn_key = {
            f.workflow_id: (len(f.burn), f.burn[-1] if f.burn else None, f.ceiling) for f in flows
        }
        names = [f.workflow_id for f in flows]
        tier_key = (names, [sorted(f.by_tier.items()) for f in flows])
        changed = burn_key != self._last.get("burn") or tier_key != self._last.get("tiers")
        if changed and self._figure_due():
            self._draw(flows, burn_key, tier_key)
        self._table(flows)

    def _add_traces(self, flows: list[Any]) -> None:
        """Traces for new workflows and tiers (outside batch_update: plotly requires it)."""
        added = False
        for f in flows:
            if f.workflow_id not in self._burn_traces:
                added = True
                self.burn.add_scatter(name=f"C {f.workflow_id}", mode="lines+markers")
                self.burn.add_scatter(
                    name=f"Ω {f.workflow_id}", mode="lines", line={"dash": "dash"}
                )
                self._burn_traces[f.workflow_id] = len(self.burn.data) - 2
            for tier in f.by_tier:
                if tier not in self._tier_traces:
                    added = True
                    self.tiers.add_bar(name=tier)
                    self._tier_traces[tier] = len(self.tiers.data) - 1
        if added:  # published at once, even when the redraw waits
            _publish(self.burn)
            _publish(self.tiers)

    def _draw(self, flows: list[Any], burn_key: Any, tier_key: Any) -> None:
        names = tier_key[0]
        if burn_key != self._last.get("burn"):
            self._last["burn"] = burn_key
            with _redraw(self.burn):
                for f in flows:
                    i = self._burn_traces[f.workflow_id]
                    pts = np.asarray(f.burn, dtype=float).reshape(-1, 2)
                    xs = np.round(pts[:, 0] - self._t0, 3)
                    self.burn.data[i].x, self.burn.data[i].y = xs, pts[:, 1]
                    if f.ceiling is not None and len(xs):
                        self.burn.data[i + 1].x = np.array([xs[0], xs[-1]])
                        self.burn.data[i + 1].y = np.array([f.ceiling, f.ceiling])
        if tier_key != self._last.get("tiers"):
            self._last["tiers"] = tier_key
            with _redraw(self.tiers):
                for tier, i in self._tier_traces.items():
                    self.tiers.data[i].x = names
                    self.tiers.data[i].y = np.array([f.by_tier.get(tier, 0.0) for f in flows])

    def _table(self, flows: list[Any]) -> None:
        rows = "".join(
            f"<tr><td>{html.escape(f.workflow_id)}</td>"
            f"<td>{'∞' if f.ceiling is None else f'{f.ceiling:g}'}</td><td>{f.spent:g}</td>"
            f"<td>{f.reserved:g}</td><td>{f.tokens_in}</td><td>{f.tokens_out}</td>"
            f"<td>{f.exceeded}</td></tr>"
            for f in flows
        )
        self.table.value = (
            "<table class='coreason-budget'><tr><th>workflow</th><th>Ω</th><th>C spent</th>"
            "<th>reserved</th><th>T in</th><th>T out</th><th>refusals</th></tr>"
            f"{rows}</table>"
        )


class DagView(View):
    """The live task DAG: nodes coloured by state, the critical path drawn in red."""

    areas = ("sched", "task", "step")
    title = "Tasks"

    def __init__(self, max_nodes: int = 200) -> None:
        self.state = DagState(max_nodes)
        self.fig = _figure(
            "Task DAG (critical path in red)",
            {
                "type": "scatter",
                "mode": "lines",
                "line": {"color": "#c0c0c0", "width": 1},
                "hoverinfo": "skip",
                "name": "edges",
            },
            {
                "type": "scatter",
                "mode": "lines",
                "line": {"color": "#d62728", "width": 4},
                "hoverinfo": "skip",
                "name": "critical",
            },
            {
                "type": "scatter",
                "mode": "markers+text",
                "textposition": "top center",
                "marker": {"size": 18, "line": {"width": 2}},
                "name": "tasks",
            },
            height=300,
            showlegend=False,
            xaxis={"visible": False},
            yaxis={"visible": False},
        )
        self.widget = self.fig
        self._last: list[tuple[str, str, tuple[str, ...]]] = []
        self._last_critical: list[str] | None = None

    def update(self, events: Sequence[Event], runtime: Any = None) -> None:
        self.state.apply(events)
        self.render()

    def positions(self) -> dict[str, tuple[float, float]]:
        layers = self.state.layers()
        rows: dict[int, int] = {}
        pos: dict[str, tuple[float, float]] = {}
        for name in sorted(self.state.nodes, key=lambda n: (layers[n], n)):
            depth = layers[name]
            pos[name] = (float(depth), float(-rows.get(depth, 0)))
            rows[depth] = rows.get(depth, 0) + 1
        return pos

    def render(self) -> None:
        key = [(n.name, n.state, tuple(n.deps)) for n in self.state.nodes.values()]
        if key == self._last and self.state.given_critical == self._last_critical:
            return
        if not self._figure_due():
            return
        self._last, self._last_critical = key, self.state.given_critical
        pos = self.positions()
        crit = self.state.critical_path()
        crit_edges = set(itertools.pairwise(crit))
        ex: list[float | None] = []
        ey: list[float | None] = []
        cx: list[float | None] = []
        cy: list[float | None] = []
        for name, node in self.state.nodes.items():
            for dep in node.deps:
                if dep in pos:
                    xs, ys = (cx, cy) if (dep, name) in crit_edges else (ex, ey)
                    xs += [pos[dep][0], pos[name][0], None]
                    ys += [pos[dep][1], pos[name][1], None]
        names = list(pos)
        with _redraw(self.fig):
            self.fig.data[0].x, self.fig.data[0].y = ex, ey
            self.fig.data[1].x, self.fig.data[1].y = cx, cy
            nodes = self.fig.data[2]
            nodes.x = np.array([pos[n][0] for n in names])
            nodes.y = np.array([pos[n][1] for n in names])
            nodes.text = names
            nodes.hovertext = [f"{n}: {self.state.nodes[n].state}" for n in names]
            nodes.marker.color = [
                STATE_COLOURS.get(self.state.nodes[n].state, "#b0b0b0") for n in names
            ]
            nodes.marker.line.color = ["#d62728" if n in crit else "#ffffff" for n in names]


class CacheView(View):
    """Cache hits, misses and the hit ratio over time; KV bytes per tier and block hits."""

    areas = ("cache", "kv")
    title = "Caches"

    def __init__(self, max_points: int = 500) -> None:
        self.state = CacheState(max_points)
        self.fig = _figure(
            "Cache hit ratio",
            {"type": "scatter", "mode": "lines", "name": "hit ratio"},
            yaxis={"range": [0, 1]},
        )
        self.counts = W.HTML()
        self._drawn: tuple[int, Any] = (0, None)
        self._t0 = time.time()
        self.widget = W.VBox([self.counts, self.fig])

    def update(self, events: Sequence[Event], runtime: Any = None) -> None:
        self.state.apply(events)
        self.render()

    def render(self) -> None:
        s = self.state
        if s.series and (len(s.series), s.series[-1]) != self._drawn and self._figure_due():
            pts = np.asarray(s.series, dtype=float).reshape(-1, 3)
            total = pts[:, 1] + pts[:, 2]
            with _redraw(self.fig):
                self.fig.data[0].x = np.round(pts[:, 0] - self._t0, 3)
                self.fig.data[0].y = np.divide(
                    pts[:, 1], total, out=np.zeros_like(total), where=total > 0
                )
            self._drawn = (len(s.series), s.series[-1])
        per = ", ".join(f"{html.escape(k)}: {h}/{h + m}" for k, (h, m) in s.by_cache.items())
        self.counts.value = (
            f"<b>hits</b> {s.hits} · <b>misses</b> {s.misses} · "
            f"<b>ratio</b> {s.ratio:.2f} · admitted {s.admits} · "
            f"evicted {s.evicts}<br><small>{per}</small>{_kv_line(s.kv)}"
        )


def _kv_line(kv: KVTiersState) -> str:
    if not kv.tiers:
        return ""
    mib = " · ".join(f"{t} {b / 2**20:.1f} MiB" for t, b in kv.tiers.items())
    in_time, late, wasted = kv.predicted
    return (
        f"<br><b>KV</b> {mib} · block hits {kv.hits}/{kv.hits + kv.misses + kv.absent} "
        f"({kv.ratio:.2f}) · waited {kv.wait_ms:.0f} ms · faults {kv.faults} · "
        f"predicted {in_time} in time, {late} late, {wasted} wasted"
    )


class DecodeView(View):
    """The decode stream, with repaired spans and forced thunks highlighted."""

    areas = ("tokens", "decode", "thunk", "workflow")
    title = "Decode"

    def __init__(self, max_chars: int = 4000) -> None:
        self.state = DecodeState(max_chars)
        self.html = W.HTML()
        self.widget = self.html
        # Escaped HTML per span, kept across redraws: spans are immutable tuples, so only the
        # few that changed since the last batch are escaped again (a redraw used to escape
        # all ~300, the largest share of the dashboard's CPU while a decode streams).
        self._fragments: dict[tuple[str, str], str] = {}

    def update(self, events: Sequence[Event], runtime: Any = None) -> None:
        self.state.apply(events)
        self.render()

    def render(self) -> None:
        s = self.state
        spans = list(s.spans)[-MAX_SPANS:]
        old, fragments = self._fragments, {}
        for span in spans:
            frag = old.get(span)
            if frag is None:
                text, kind = span
                frag = (
                    html.escape(text)
                    if kind == "text"
                    else f"<span class='coreason-{kind}'>{html.escape(text)}</span>"
                )
            fragments[span] = frag
        self._fragments = fragments  # bounded: only the spans on screen
        body = "".join(fragments[span] for span in spans)
        self.html.value = (
            f"<div>{SPAN_CSS}<small>{html.escape(s.state)} · {s.tokens} tokens · {s.repairs} "
            f"repaired · {s.forced} thunks forced"
            f"{' · ' + html.escape(s.precision) if s.precision else ''}</small>"
            "<pre style='white-space:pre-wrap'>"
            f"{body}</pre></div>"
        )
