"""A notebook as one self-contained web page: its plots, tables and forms render with no network.

nbconvert's HTML export saves the widgets' state in the page but loads the widget manager and
the widgets' code from CDNs when the page opens, so an executed notebook opened offline (on an
air-gapped cluster, from an archive) shows blanks where the dashboard and the Oracle Circuit
were. :class:`OfflineHTMLExporter` puts everything in the page instead:

* RequireJS and the Jupyter widget manager with the ipywidgets controls
  (``@jupyter-widgets/html-manager``'s ``embed-amd.js``), vendored from the npm registry into
  ``coreason_lab/_static/offline/`` by ``scripts/vendor-offline-assets.sh``;
* anywidget's module, taken from the installed ``anywidget`` package and defined under its
  name, so the widget manager finds it without fetching it;
* each anywidget's own code (plotly's ``FigureWidget`` carries its ~5 MB bundle as ``_esm``),
  stored once per distinct module however many figures share it;
* MathJax 3 (``mathjax``'s ``es5/tex-svg-full.js``, vendored by the same script: every TeX
  extension and the SVG glyphs in one 2.3 MB file) where the notebook has math to typeset
  (:func:`has_math`; ``OfflineHTMLExporter.mathjax`` = ``"always"`` or ``"never"`` overrides),
  in place of the lab template's MathJax 2 from a CDN.

Use it with ``jupyter nbconvert --to coreason_lab.OfflineHTMLExporter notebook.ipynb`` (or
``--to coreason-html`` once the package's entry point is installed), or call
:func:`export_html`. ``coreason-lab demo`` writes its page with it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from nbconvert import HTMLExporter
from traitlets import CaselessStrEnum, Unicode, default

__all__ = ["OfflineHTMLExporter", "drop_stale_buffers", "export_html", "has_math", "share_modules"]

_STATIC = Path(__file__).resolve().parent / "_static"
_STATE = "application/vnd.jupyter.widget-state+json"
_SHARE_FROM = 10_000  # characters: an _esm at least this long is stored once and shared
_ANYWIDGET_DEFINE = 'define(["@jupyter-widgets/base"], widget_default);'
# what MathJax would find: its delimiters, and the environments it typesets outside math mode
_MATH_MARKS = ("$", "\\(", "\\[", "\\begin{")
_MATH_OUTPUTS = ("text/latex", "text/markdown", "text/html")


def _script(text: str) -> str:
    """JavaScript made safe to sit between ``<script>`` tags."""
    return text.replace("</script", "<\\/script")


def _anywidget_module() -> str:
    """anywidget's AMD module (its classic-notebook build), defined under the name the widget
    state asks for."""
    source = importlib_resources.files("anywidget").joinpath("nbextension/index.js").read_text()
    if source.count(_ANYWIDGET_DEFINE) != 1:
        msg = "anywidget's nbextension/index.js no longer ends with its anonymous define()"
        raise RuntimeError(msg)
    return source.replace(_ANYWIDGET_DEFINE, f'define("anywidget", {_ANYWIDGET_DEFINE[7:]}')


def share_modules(nb: Any) -> list[str]:
    """Replace each long ``_esm`` in ``nb``'s widget state by ``"coreason-esm:<n>"``; the
    distinct modules, in order of ``n``."""
    modules: list[str] = []
    state = nb.metadata.get("widgets", {}).get(_STATE, {}).get("state", {})
    for model in state.values():
        esm = model.get("state", {}).get("_esm")
        if not isinstance(esm, str) or len(esm) < _SHARE_FROM:
            continue
        if esm not in modules:
            modules.append(esm)
        model["state"]["_esm"] = f"coreason-esm:{modules.index(esm)}"
    return modules


def _strings(node: Any) -> Iterator[str]:
    """Every string in a JSON-like ``node`` (a widget's state), skipping its ``_esm`` code."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key != "_esm":
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def has_math(nb: Any) -> bool:
    """Whether MathJax would typeset anything in ``nb``'s page: a LaTeX output, or a math
    delimiter in a markdown cell, a markdown or HTML output, or a widget's saved state."""
    texts: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            texts.append(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/latex" in data:
                return True
            texts.extend(str(data[mime]) for mime in _MATH_OUTPUTS if mime in data)
    state = nb.metadata.get("widgets", {}).get(_STATE, {}).get("state", {})
    texts.extend(_strings(state))
    return any(mark in text for text in texts for mark in _MATH_MARKS)


def _child(node: Any, key: Any) -> Any:
    """``node[key]`` for a dict key or a list index; ``None`` where there is none."""
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


def _holds(state: Any, path: list[Any]) -> bool:
    """Whether ``path[:-1]`` leads through ``state`` to a container the buffer can go in."""
    node = state
    for key in path[:-1]:
        node = _child(node, key)
    return isinstance(node, (dict, list))


def drop_stale_buffers(nb: Any) -> int:
    """Drop saved binary buffers whose field is gone from the saved state; how many.

    nbclient records a widget's buffers message by message and keeps them when a later
    message sets their field to ``None`` (plotly's ``FigureWidget`` sends every batch of
    changes in ``_py2js_update``, then clears it). The widget manager would write such a buffer
    into ``None`` and fail to restore the widget, and every widget containing it.
    """
    dropped = 0
    state = nb.metadata.get("widgets", {}).get(_STATE, {}).get("state", {})
    for model in state.values():
        buffers = model.get("buffers")
        if not buffers:
            continue
        kept = [b for b in buffers if _holds(model.get("state", {}), list(b["path"]))]
        dropped += len(buffers) - len(kept)
        if kept:
            model["buffers"] = kept
        else:
            del model["buffers"]
    return dropped


class OfflineHTMLExporter(HTMLExporter):  # type: ignore[misc]
    """JupyterLab's HTML export with its widget manager and widget code inside the page."""

    export_from_notebook = "HTML, self-contained (widgets offline)"

    @default("template_name")
    def _template_name_default(self) -> str:
        return "coreason_offline"

    @default("extra_template_basedirs")
    def _extra_template_basedirs_default(self) -> list[str]:
        return [str(_STATIC / "templates")]

    offline_assets = Unicode(
        str(_STATIC / "offline"),
        config=True,
        help="folder holding require.js, embed-amd.js, shared-modules.js and MathJax's scripts",
    )

    mathjax = CaselessStrEnum(
        ["auto", "always", "never"],
        default_value="auto",
        config=True,
        help="put MathJax (2.3 MB) in the page: where the notebook has math (auto), or always, "
        "or never (math stays TeX source)",
    )

    def from_notebook_node(
        self, nb: Any, resources: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[Any, dict[str, Any]]:
        nb = copy.deepcopy(nb)
        drop_stale_buffers(nb)
        resources = dict(resources or {})
        folder = Path(self.offline_assets)
        resources["coreason_offline"] = {
            "requirejs": _script((folder / "require.js").read_text()),
            "embed": _script((folder / "embed-amd.js").read_text()),
            "shared_modules": _script((folder / "shared-modules.js").read_text()),
            "anywidget": _script(_anywidget_module()),
            "modules": share_modules(nb),
            "mathjax": self._mathjax(folder, nb),
        }
        body, out = super().from_notebook_node(nb, resources=resources, **kw)
        return str(body), out

    def _mathjax(self, folder: Path, nb: Any) -> dict[str, str] | None:
        """MathJax's configuration, MathJax, and the widget manager's MathJax 2 shim."""
        if self.mathjax == "never" or (self.mathjax == "auto" and not has_math(nb)):
            return None
        return {
            "config": _script((folder / "mathjax-config.js").read_text()),
            "script": _script((folder / "tex-svg-full.js").read_text()),
            "hub": _script((folder / "mathjax-hub.js").read_text()),
        }


def export_html(notebook: Path, out: Path | None = None) -> Path:
    """Write ``notebook`` (executed) as a self-contained page beside it (or at ``out``)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    # traitlets' configurable __init__ is unannotated: the exporter's constructor inherits it
    exporter = OfflineHTMLExporter()  # type: ignore[no-untyped-call]
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    target = out if out is not None else notebook.with_suffix(".html")
    target.write_text(body)
    return target
