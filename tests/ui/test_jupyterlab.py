"""The tour notebook in a real JupyterLab, driven by headless Chromium (issue 8, third level).

A real ``jupyter lab`` from the venv serves a copy of ``notebooks/00_tour.ipynb``; Chromium runs
every cell, checks that the dashboard's ipywidgets and plotly figures render and update, opens
the coreason side panel, clicks *pause* on the tour's ledger and checks the kernel's runtime
paused the workflow (the panel shows it, ``%coreason status`` reports it), then that a pause
sent from a magic reaches the panel too. A second, model-free test clicks resume while a cell
sleeps on the main shell; a third checks that the dashboard's plots hold their traces after
*Run All* and in a second tab. Screenshots land in ``test-artifacts/ui/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._fixtures.servers import free_port
from tests.ui._lab import (
    CHROMIUM,
    KERNEL_IDLE,
    ROOT,
    RUN_NEW_CELL,
    Browser,
    LabServer,
    cell_output_text,
    lab_env,
    launch_chromium,
    open_lab,
    run_all,
    run_cells_in_order,
    screenshot,
    start_lab,
    stop_lab,
)

pytestmark = pytest.mark.ui

TOUR = ROOT / "notebooks" / "00_tour.ipynb"
WORKFLOW = "tour"
CELL_TIMEOUT_S = 240  # the first ask loads SmolLM2: 20 s idle, 130 s on a loaded 2-core box

CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map((c, i) => ({
  index: i,
  type: c.model.type,
  source: c.model.sharedModel.getSource(),
  tags: c.model.getMetadata('tags') || [],
  count: c.model.type === 'code' ? c.model.executionCount : null,
  errors: c.model.type === 'code'
    ? c.model.outputs.toJSON().filter(o => o.output_type === 'error')
        .map(o => o.ename + ': ' + o.evalue)
    : []
}))"""

# The plotly figure traces of one cell's output, as plotly holds them on the graph div; plotly 6
# may keep a numeric array base64-encoded ({dtype, bdata}), so that is decoded here.
FIGURE_TRACES = """(i) => {
  const types = { f8: Float64Array, f4: Float32Array, i4: Int32Array, i2: Int16Array,
                  i1: Int8Array, u4: Uint32Array, u2: Uint16Array, u1: Uint8Array };
  const values = y => {
    if (!y) { return []; }
    if (y.bdata !== undefined) {
      const raw = atob(y.bdata);
      const bytes = Uint8Array.from(raw, ch => ch.charCodeAt(0));
      return Array.from(new (types[y.dtype] || Float64Array)(bytes.buffer));
    }
    return Array.from(y);
  };
  return Array.from(window.jupyterapp.shell.currentWidget.content.widgets[i].node
    .querySelectorAll('.js-plotly-plot')).map(gd => (gd.data || []).map(t => ({
      name: t.name || '', y: values(t.y)
    })));
}"""

# Scroll cell i into view and tag its node, so selectors do not depend on cell positions.
MARK_CELL = """async ([i, name]) => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  await nb.scrollToItem(i, 'start');
  nb.widgets[i].node.dataset.coreasonTest = name;
}"""

LEDGER = f"#coreason-panel .jp-CoreasonPanel-ledger[data-workflow='{WORKFLOW}']"


@pytest.fixture
def lab(tmp_path: Path, model_cache: Path) -> Iterator[LabServer]:
    """``jupyter lab`` on a free 127.0.0.1 port, serving a tmp copy of the tour."""
    home = tmp_path / "coreason-home"
    home.mkdir()
    server = start_lab(tmp_path, free_port(), [TOUR], lab_env(home, model_cache))
    yield server
    stop_lab(server)


@pytest.fixture
def chromium() -> Iterator[Browser]:
    pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    browser = launch_chromium()
    yield browser
    browser.close()


def _cells(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate(CELLS))


def _index_of(cells: list[dict[str, Any]], start: str) -> int:
    return next(c["index"] for c in cells if c["source"].startswith(start))


def _run_cell(page: Any, source: str) -> int:
    index = int(page.evaluate(RUN_NEW_CELL, [source, True]))
    page.wait_for_function(KERNEL_IDLE)
    return index


def _ledger_state(page: Any) -> str:
    return str(page.get_attribute(LEDGER, "data-state"))


@pytest.mark.timeout(540)
def test_tour_runs_in_jupyterlab_and_the_side_panel_pauses_its_workflow(
    lab: LabServer, chromium: Browser
) -> None:
    page = open_lab(chromium, lab, TOUR.name)
    try:
        _drive(page)
    except Exception:
        screenshot(page, "failure.png")
        print(lab.log_tail())  # shown by pytest on failure
        raise


def _drive(page: Any) -> None:
    # 1. run every cell in order, each to its reply (Run All itself: the small-notebook test)
    run_cells_in_order(page, CELL_TIMEOUT_S)
    cells = _cells(page)
    code = [c for c in cells if c["type"] == "code"]
    assert [c["index"] for c in code if c["count"] is None] == []  # every cell ran
    unexpected = [
        (c["index"], c["errors"])
        for c in code
        if c["errors"] and "raises-exception" not in c["tags"]
    ]
    assert unexpected == []
    caged = [e for c in code if "raises-exception" in c["tags"] for e in c["errors"]]
    assert caged and all(e.startswith("BudgetExceededError") for e in caged)

    # 2. the dashboard rendered as live widgets: ipywidgets controls, plotly figures, ledger table
    dash = _index_of(cells, "%coreason dashboard")
    page.evaluate(MARK_CELL, [dash, "dashboard"])
    node = "[data-coreason-test='dashboard'] .jp-OutputArea"
    page.wait_for_selector(f"{node} .jupyter-widgets button:has-text('pause')")
    page.wait_for_selector(f"{node} .js-plotly-plot")
    page.wait_for_selector(f"{node} table.coreason-budget")
    assert "20000" in (page.text_content(f"{node} table.coreason-budget") or "")
    screenshot(page, "tour_dashboard.png")

    # ... and updates when a later cell changes the runtime: Ω goes to 25000 in table and plot
    _run_cell(page, f"%coreason budget {WORKFLOW} 25000")
    page.wait_for_function(
        "(sel) => document.querySelector(sel).textContent.includes('25000')",
        arg=f"{node} table.coreason-budget",
    )
    page.evaluate(MARK_CELL, [dash, "dashboard"])
    page.wait_for_function(
        f"(i) => ({FIGURE_TRACES})(i).flat().some(t => t.name === 'Ω {WORKFLOW}'"
        " && t.y.length > 0 && t.y.every(y => y === 25000))",
        arg=dash,
    )

    # 3. the side panel: open it from its tab, connected, showing the tour's ledger
    page.click(".jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id='coreason-panel']")
    page.wait_for_selector("#coreason-panel .jp-CoreasonPanel-status[data-connected='true']")
    page.wait_for_selector(LEDGER)
    assert "25,000" in page.inner_text(LEDGER)
    assert page.locator("#coreason-panel .jp-CoreasonPanel-event").count() > 0

    # click pause: the runtime acknowledges over the comm and the kernel reports it paused
    page.click(f"{LEDGER} button[data-intent='pause']")
    page.wait_for_selector(f"{LEDGER}[data-state='paused']")
    assert page.is_disabled(f"{LEDGER} button[data-intent='pause']")
    status = cell_output_text(page, _run_cell(page, "%coreason status"))
    assert f"{WORKFLOW}: paused" in status
    screenshot(page, "tour_panel_paused.png")

    # resume from the panel, then pause from a magic: the panel follows the runtime's events
    page.click(f"{LEDGER} button[data-intent='resume']")
    page.wait_for_function(f"() => document.querySelector(\"{LEDGER}\").dataset.state !== 'paused'")
    status = cell_output_text(page, _run_cell(page, "%coreason status"))
    assert f"{WORKFLOW}: running" in status
    _run_cell(page, f"%coreason pause {WORKFLOW}")
    page.wait_for_selector(f"{LEDGER}[data-state='paused']")


def _serve_cells(
    tmp_path: Path, model_cache: Path, name: str, cells: list[Any]
) -> Iterator[LabServer]:
    """``jupyter lab`` on a free 127.0.0.1 port, serving one notebook made of ``cells``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / name
    nbformat.write(nb, path)
    home = tmp_path / "coreason-home"
    home.mkdir()
    server = start_lab(tmp_path, free_port(), [path], lab_env(home, model_cache))
    yield server
    stop_lab(server)


@pytest.fixture
def small_lab(tmp_path: Path, model_cache: Path) -> Iterator[LabServer]:
    """``jupyter lab`` serving the extension, one ledger and a refused budget (no model)."""
    import nbformat

    refused = nbformat.v4.new_code_cell(f"%coreason budget {WORKFLOW} lots")  # a UsageError
    refused.metadata["tags"] = ["raises-exception"]
    yield from _serve_cells(
        tmp_path,
        model_cache,
        "small.ipynb",
        [
            nbformat.v4.new_code_cell("%load_ext coreason_lab"),
            nbformat.v4.new_code_cell(f"%coreason budget {WORKFLOW} 1000"),
            refused,
            nbformat.v4.new_code_cell("after_the_refusal = True"),
        ],
    )


@pytest.mark.timeout(150)
def test_side_panel_intent_acts_while_a_cell_runs(small_lab: LabServer, chromium: Browser) -> None:
    """JupyterLab 4.6 sends comm messages on an ipykernel 7 subshell (perCommTarget, its
    default), so a click reaches the runtime while a cell holds the main shell."""
    page = open_lab(chromium, small_lab, "small.ipynb")
    # JupyterLab's Run All goes on past a cell tagged raises-exception (here a typed refusal)
    run_all(page, CELL_TIMEOUT_S)
    cells = [c for c in _cells(page) if c["type"] == "code"]
    assert [c["count"] is not None for c in cells] == [True] * 4
    assert "UsageError" in cell_output_text(page, cells[2]["index"])  # shown on stderr
    assert not cells[3]["errors"]
    page.click(".jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id='coreason-panel']")
    page.click(f"{LEDGER} button[data-intent='pause']")
    page.wait_for_selector(f"{LEDGER}[data-state='paused']")
    busy = int(
        page.evaluate(
            RUN_NEW_CELL, ["print('sleeping', flush=True)\nimport time\ntime.sleep(30)", False]
        )
    )
    page.wait_for_function(
        "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node"
        ".querySelector('.jp-OutputArea').textContent.includes('sleeping')",
        arg=busy,
    )
    page.click(f"{LEDGER} button[data-intent='resume']")
    try:
        page.wait_for_function(
            f"() => document.querySelector(\"{LEDGER}\").dataset.state !== 'paused'", timeout=20_000
        )
        still_running = (
            page.evaluate(
                "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i]"
                ".model.executionState",
                busy,
            )
            == "running"
        )
    finally:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:interrupt-kernel')")
    assert still_running  # the resume landed while the sleep still held the main shell


DASHBOARD_TRACES = (
    "(i) => { const figs = ({FIGURE_TRACES})(i).map(f => f.map(t => t.name));"
    " return figs.length > 0 && figs[0].includes('Ω wf2')"
    " && figs.some(f => f.includes('critical')); }"
).replace("{FIGURE_TRACES}", FIGURE_TRACES)


@pytest.fixture
def dashboard_lab(tmp_path: Path, model_cache: Path) -> Iterator[LabServer]:
    """``jupyter lab`` serving a notebook that shows the dashboard between two budgets."""
    import nbformat

    yield from _serve_cells(
        tmp_path,
        model_cache,
        "dash.ipynb",
        [
            nbformat.v4.new_code_cell(source)
            for source in (
                "%load_ext coreason_lab",
                "%coreason budget wf 1000",
                "%coreason dashboard",
                "%coreason budget wf2 2000",
            )
        ],
    )


@pytest.mark.timeout(180)
def test_dashboard_plots_survive_run_all_and_a_reopened_tab(
    dashboard_lab: LabServer, chromium: Browser
) -> None:
    """The plots hold their traces after *Run All*, and a second tab drawing the same widgets
    from the kernel's state shows them too (it showed every plot empty: plotly's synced
    trace state was the one at construction; see ``_views._publish``)."""
    page = open_lab(chromium, dashboard_lab, "dash.ipynb")
    run_all(page, CELL_TIMEOUT_S)
    page.wait_for_function(DASHBOARD_TRACES, arg=2, timeout=30_000)
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    second = open_lab(chromium, dashboard_lab, "dash.ipynb")
    try:
        second.wait_for_function(DASHBOARD_TRACES, arg=2, timeout=30_000)
    except Exception:
        screenshot(second, "reopened-dashboard.png")
        raise
    finally:
        second.close()
