"""Pause from the JupyterLab side panel: click to "paused" on screen, against the magic path.

A real ``jupyter lab`` and headless Chromium (Debian's binary). A one-workflow notebook runs
``%load_ext coreason_lab`` and sets a ledger; the side panel connects over the ``coreason``
comm. Then, alternating, ``REPS`` times each:

* **panel**: a click on the ledger's *pause* button until the panel shows ``paused`` (the
  intent goes over the comm to the kernel, ``Controls.apply`` runs, the ack comes back);
* **magic**: ``%coreason pause`` sent as an execute request on the same kernel connection,
  timed to its execute reply (the runtime paused) and to the panel showing ``paused`` (the
  ``workflow.paused`` event crossing the bus, the 10/s throttle and the comm).

Each pause is undone by a ``%coreason resume`` before the next one; timings are
``performance.now()`` in the page, so both paths share one clock and one browser.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from tests._fixtures.servers import free_port  # noqa: E402
from tests.ui._lab import (  # noqa: E402
    lab_env,
    launch_chromium,
    open_lab,
    run_cells_in_order,
    start_lab,
    stop_lab,
)

REPS = 15
WORKFLOW = "bench"
LEDGER = f"#coreason-panel .jp-CoreasonPanel-ledger[data-workflow='{WORKFLOW}']"

# Resolve when the ledger row's data-state satisfies `want`, with the ms since `t0`.
_WAIT_STATE = """
function waitState(want, t0) {
  return new Promise(resolve => {
    const check = () => {
      const row = document.querySelector(SEL);
      if (row && want(row.dataset.state)) { obs.disconnect(); resolve(performance.now() - t0); }
    };
    const obs = new MutationObserver(check);
    obs.observe(document.querySelector('#coreason-panel'),
                { subtree: true, attributes: true, childList: true });
    check();
  });
}
""".replace("SEL", json.dumps(LEDGER))

CLICK_PAUSE = (
    "async () => {"
    + _WAIT_STATE
    + """
  const button = document.querySelector(SEL + " button[data-intent='pause']");
  const t0 = performance.now();
  button.click();
  return await waitState(s => s === 'paused', t0);
}""".replace("SEL", json.dumps(LEDGER))
)

MAGIC = (
    "async (code) => {"
    + _WAIT_STATE
    + """
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const t0 = performance.now();
  const shown = waitState(s => s === 'paused', t0);
  await kernel.requestExecute({ code, store_history: false }).done;
  const reply = performance.now() - t0;
  return [reply, await shown];
}"""
)

RESUME = (
    "async (code) => {"
    + _WAIT_STATE
    + """
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const shown = waitState(s => s !== 'paused', performance.now());
  await kernel.requestExecute({ code, store_history: false }).done;
  await shown;
}"""
)


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext coreason_lab"),
        nbformat.v4.new_code_cell(f"%coreason budget {WORKFLOW} 1000"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-lab-pause-"))
    home = tmp / "home"
    home.mkdir()
    nb = tmp / "pause_bench.ipynb"
    _notebook(nb)
    models = Path(tempfile.gettempdir()) / "coreason-bench-models"  # no model is loaded here
    server = start_lab(tmp, free_port(), [nb], lab_env(home, models))
    browser = None
    try:
        browser = launch_chromium()
        page = open_lab(browser, server, nb.name)
        run_cells_in_order(page, 180)
        page.click(".jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id='coreason-panel']")
        page.wait_for_selector("#coreason-panel .jp-CoreasonPanel-status[data-connected='true']")
        page.wait_for_selector(f"{LEDGER} button[data-intent='pause']:not([disabled])")
        panel, magic_reply, magic_shown = [], [], []
        resume = f"%coreason resume {WORKFLOW}"
        for _ in range(REPS):
            panel.append(float(page.evaluate(CLICK_PAUSE)))
            page.evaluate(RESUME, resume)
            reply, shown = page.evaluate(MAGIC, f"%coreason pause {WORKFLOW}")
            magic_reply.append(float(reply))
            magic_shown.append(float(shown))
            page.evaluate(RESUME, resume)
    finally:
        if browser is not None:
            browser.close()
        stop_lab(server)

    base = statistics.median(magic_shown)
    rows = []
    for name, xs in (
        ("panel click → panel shows paused (comm ack)", panel),
        ("%coreason pause → execute reply", magic_reply),
        ("%coreason pause → panel shows paused (event)", magic_shown),
    ):
        med = statistics.median(xs)
        rows.append(
            [
                name,
                REPS,
                round(med, 1),
                round(_pct(xs, 0.9), 1),
                round(max(xs), 1),
                round(med / base, 2),
            ]
        )
    notes = (
        f"{REPS} pauses per path, alternating, each undone by `%coreason resume`; idle "
        "kernel, no request running (a running decode adds at most one token before the "
        "gate closes, see bench_lab_pause_latency). Times in ms from `performance.now()` "
        "in headless Chromium 156 against a local `jupyter lab` on a shared 2-core "
        "machine under load from other work, so absolute numbers are noisy; the ratio "
        "column divides by the magic path's median time to the panel."
    )
    write_section(  # prints the block it wrote
        "bench_lab_pause_click",
        "Pausing from the side panel reaches the runtime and shows on screen no slower than "
        "typing `%coreason pause` in a cell.",
        ["path", "n", "median ms", "p90 ms", "max ms", "÷ magic→panel median"],
        rows,
        notes=notes,
    )


if __name__ == "__main__":
    t = time.monotonic()
    main()
    print(f"took {time.monotonic() - t:.0f} s")
