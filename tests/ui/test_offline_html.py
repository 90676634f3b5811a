"""Exported notebooks opened in headless Chromium with the network off render their widgets
and their math.

The page is opened from a ``file:`` URL in a browser context that is offline and whose every
request other than ``file:``, ``blob:`` and ``data:`` is aborted (and recorded: the tests want
none), so anything the page would fetch from a CDN fails at once. The plots are found as
plotly's SVG, the forms as their inputs, the math as MathJax's SVG.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from coreason_lab import export_html
from tests.ui._lab import CHROMIUM, ROOT, launch_chromium

pytestmark = [
    pytest.mark.ui,
    pytest.mark.notebook,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

PLOT_SVG = "() => document.querySelectorAll('.js-plotly-plot svg.main-svg').length"
PLOTS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  svg: gd.querySelectorAll('svg.main-svg').length,
  traces: (gd.data || []).map(t => Array.from(t.y || []).map(Number))
}))"""
INPUTS = "() => Array.from(document.querySelectorAll('.widget-text input')).map(i => i.value)"
# MathJax's SVG output per place: a markdown cell, LaTeX outputs, a widget's math
MATH = """() => Object.fromEntries(
  ['.jp-RenderedMarkdown', '.jp-RenderedLatex', '.widget-htmlmath'].map(where => [where,
    document.querySelectorAll(`${where} mjx-container svg`).length]))"""
MATH_DONE = """() => window.MathJax && MathJax.startup && MathJax.startup.promise
  .then(() => document.querySelectorAll('mjx-container svg').length)"""

# The dashboard's figures: plotly FigureWidgets redrawn in batches (each batch goes out in
# _py2js_update with binary buffers, then is cleared), their state published after each redraw.
FIGURES = """
import numpy as np
import plotly.graph_objects as go
import ipywidgets as W
from coreason_lab._widgets._views import _live_figure, _redraw

squares = _live_figure()(data=[go.Scatter(y=np.array([1.0, 4.0, 9.0]), name="squares")])
cubes = _live_figure()(data=[go.Bar(y=np.array([1.0, 8.0]))])
W.VBox([squares, cubes])
"""
UPDATE = """
with _redraw(squares):
    squares.data[0].y = np.array([1.0, 4.0, 9.0, 16.0])
W.VBox([W.Text(value="cos(x)", description="derivative"), W.HTMLMath(value="$y = x^2$")])
"""
# LaTeX outputs: IPython's Math and a SymPy expression (its _repr_latex_)
LATEX = """
import sympy
from IPython.display import Math, display
display(Math(r"\\int_0^1 x^3\\,dx = \\frac{1}{4}"))
sympy.Symbol("x") ** 3
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    b = launch_chromium()
    yield b
    b.close()


def open_offline(browser: Any, page_path: Path) -> tuple[Any, list[str]]:
    """The page, opened with the network off; the URLs it tried to fetch from outside."""
    context = browser.browser.new_context(offline=True)
    outside: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(("file:", "blob:", "data:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.goto(page_path.as_uri(), wait_until="load", timeout=120_000)
    page.wait_for_function(f"() => ({PLOT_SVG})() > 0", timeout=120_000)
    page.evaluate(MATH_DONE)  # MathJax's typesetting, the widgets' included, has finished
    return page, outside


def test_an_exported_notebook_renders_its_widgets_offline(tmp_path: Path, browser: Any) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("The cubes: $x^3$."),
        nbformat.v4.new_code_cell(FIGURES),
        nbformat.v4.new_code_cell(UPDATE),
        nbformat.v4.new_code_cell(LATEX),
    ]
    path = os.pathsep.join([str(ROOT / "runtime" / "src"), str(ROOT)])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(
        env={**os.environ, "PYTHONPATH": path}
    )
    executed = tmp_path / "figures.ipynb"
    nbformat.write(nb, executed)
    page, outside = open_offline(browser, export_html(executed))
    plots = page.evaluate(PLOTS)
    assert len(plots) == 2 and all(p["svg"] > 0 for p in plots)
    assert plots[0]["traces"] == [[1.0, 4.0, 9.0, 16.0]]  # the state after the update
    assert page.evaluate(INPUTS) == ["cos(x)"]
    math = page.evaluate(MATH)
    assert math == {".jp-RenderedMarkdown": 1, ".jp-RenderedLatex": 2, ".widget-htmlmath": 1}
    assert outside == []


@pytest.mark.model
@pytest.mark.timeout(900)
def test_the_demos_tour_page_shows_the_dashboard_and_the_form_offline(
    tmp_path: Path, browser: Any, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coreason_lab.demo import main

    monkeypatch.setenv("COREASON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COREASON_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "runtime" / "src"), str(ROOT)]))
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    page, outside = open_offline(browser, tmp_path / "out" / "00_tour.html")
    plots = page.evaluate(PLOTS)
    assert len(plots) >= 2 and all(p["svg"] > 0 for p in plots)
    assert any(any(len(t) > 1 for t in p["traces"]) for p in plots)  # the budget burned down
    assert page.evaluate(INPUTS)[-2:] == ["sin(x)", "cos(x)"]  # the answered Oracle Circuit
    assert outside == []
