"""The self-contained HTML export: what it puts in the page and what it repairs in the state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import nbformat

import coreason_lab
from coreason_lab._export import (
    OfflineHTMLExporter,
    drop_stale_buffers,
    export_html,
    has_math,
    share_modules,
)

OFFLINE = Path(coreason_lab.__file__).parent / "_static" / "offline"
STATE = "application/vnd.jupyter.widget-state+json"
BUNDLE = "export default { render() {} };\n" + "// plotly\n" * 2_000


def notebook_with_state(state: dict[str, object]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("fig"))
    nb.metadata["widgets"] = {STATE: {"version_major": 2, "version_minor": 0, "state": state}}
    return nbformat.from_dict(nb)


def figure(esm: str, buffers: list[list[object]] | None = None) -> dict[str, object]:
    model: dict[str, object] = {
        "model_name": "AnyModel",
        "model_module": "anywidget",
        "model_module_version": "~0.11.*",
        "state": {"_esm": esm, "_py2js_update": None, "_widget_data": [{"y": {"dtype": "f8"}}]},
    }
    if buffers is not None:
        model["buffers"] = [
            {"path": p, "data": "AAAAAAAA8D8=", "encoding": "base64"} for p in buffers
        ]
    return model


def test_the_vendored_scripts_are_the_npm_registrys() -> None:
    sources = json.loads((OFFLINE / "SOURCES.json").read_text())
    for name, entry in sources.items():
        digest = hashlib.sha256((OFFLINE / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], (
            f"{name} differs from {entry['package']}@{entry['version']}"
        )


def test_a_module_shared_by_figures_is_stored_once() -> None:
    nb = notebook_with_state({"a": figure(BUNDLE), "b": figure(BUNDLE), "c": figure("short")})
    modules = share_modules(nb)
    state = nb.metadata["widgets"][STATE]["state"]
    assert modules == [BUNDLE]
    assert state["a"]["state"]["_esm"] == state["b"]["state"]["_esm"] == "coreason-esm:0"
    assert state["c"]["state"]["_esm"] == "short"  # small modules stay where they are


def test_buffers_of_a_cleared_field_are_dropped() -> None:
    stale = ["_py2js_update", "style_data", "y", 0, "buffer"]
    live = ["_widget_data", 0, "y", "buffer"]
    nb = notebook_with_state({"a": figure(BUNDLE, [stale, live]), "b": figure(BUNDLE, [stale])})
    assert drop_stale_buffers(nb) == 2
    state = nb.metadata["widgets"][STATE]["state"]
    assert [b["path"] for b in state["a"]["buffers"]] == [live]
    assert "buffers" not in state["b"]


def test_the_page_loads_no_widget_code_from_a_cdn(tmp_path: Path) -> None:
    nb = notebook_with_state({"a": figure(BUNDLE), "b": figure(BUNDLE)})
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    page = export_html(path).read_text()
    assert "require.min.js" not in page and "cdnjs.cloudflare.com/ajax/libs/require" not in page
    assert "unpkg.com/@jupyter-widgets" not in page and "embed-amd.js'" not in page
    assert 'define("anywidget", ["@jupyter-widgets/base"], widget_default);' in page
    assert page.count("\\/\\/ plotly") == 2_000  # the figures' module, once (JSON: "\/")
    assert 'data-coreason-esm="0"' in page


def test_the_exporter_is_found_by_nbconvert_by_its_import_path() -> None:
    from nbconvert.exporters import get_exporter

    assert get_exporter("coreason_lab.OfflineHTMLExporter") is OfflineHTMLExporter


def notebook_with(*cells: nbformat.NotebookNode) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def latex_output(tex: str) -> Any:
    cell = nbformat.v4.new_code_cell("x**3")
    cell.outputs = [
        nbformat.v4.new_output("execute_result", {"text/latex": tex, "text/plain": "x**3"})
    ]
    return cell


def test_math_is_found_in_markdown_latex_outputs_and_widget_state() -> None:
    assert has_math(notebook_with(nbformat.v4.new_markdown_cell("cubes: $x^3$")))
    assert has_math(notebook_with(nbformat.v4.new_markdown_cell(r"\begin{align} a \end{align}")))
    assert has_math(notebook_with(latex_output(r"$\displaystyle x^{3}$")))
    assert has_math(notebook_with_state({"m": {"state": {"value": "$y = x^2$"}}}))


def test_a_notebook_without_math_is_found_to_have_none() -> None:
    code = nbformat.v4.new_code_cell("cost = 3")
    code.outputs = [nbformat.v4.new_output("stream", text="$ echo in a stream is not typeset\n")]
    assert not has_math(notebook_with(nbformat.v4.new_markdown_cell("# A plot"), code))
    assert not has_math(notebook_with_state({"a": figure("export const x = '$';" * 1_000)}))


def test_a_page_with_math_carries_mathjax_and_loads_none(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook_with(latex_output(r"$\displaystyle x^{3}$")), path)
    page = export_html(path).read_text()
    assert "cdnjs.cloudflare.com/ajax/libs/mathjax" not in page
    assert "text/x-mathjax-config" not in page  # the lab template's MathJax 2 set-up is gone
    mathjax = (OFFLINE / "tex-svg-full.js").read_text()
    assert mathjax[:2_000] in page and mathjax[-2_000:] in page
    assert "MathJax.Hub = {" not in page and "mj.Hub = {" in page  # the widgets' shim


def test_a_page_without_math_carries_no_mathjax(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook_with(nbformat.v4.new_markdown_cell("# A plot")), path)
    page = export_html(path).read_text()
    assert "mathjax" not in page.lower()
    assert len(page) < 1_000_000


def test_mathjax_can_be_asked_for_always_or_never(tmp_path: Path) -> None:
    plain = notebook_with(nbformat.v4.new_markdown_cell("# A plot"))
    with_math = notebook_with(latex_output("$x$"))
    always = OfflineHTMLExporter(mathjax="always")  # type: ignore[no-untyped-call]
    never = OfflineHTMLExporter(mathjax="never")  # type: ignore[no-untyped-call]
    tail = (OFFLINE / "tex-svg-full.js").read_text()[-2_000:]
    assert tail in always.from_notebook_node(plain)[0]
    assert "MathJax" not in never.from_notebook_node(with_math)[0]
