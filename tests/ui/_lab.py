"""A real ``jupyter lab`` server from the venv and a headless Chromium page driving it.

Readiness follows what galata (JupyterLab's playwright helpers) waits on, without galata:
the splash screen is gone, ``window.jupyterapp`` exists (the server runs with
``--LabApp.expose_app_in_browser=True``, the switch galata uses) and ``app.restored`` resolved.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = ROOT / "test-artifacts" / "ui"

# News and update checks would reach for the network; the panel must be the only toast-free
# thing on screen in the screenshot.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@dataclass
class LabServer:
    """One running ``jupyter lab``: where it listens, its token, its root folder, its log."""

    url: str
    token: str
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def page_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _status_ok(url: str, token: str) -> bool:
    req = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200 and "started" in json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_lab(
    tmp: Path, port: int, notebooks: list[Path], env: dict[str, str], timeout: float = 60.0
) -> LabServer:
    """Start ``jupyter lab`` on 127.0.0.1:``port`` serving copies of ``notebooks``."""
    root = tmp / "root"
    root.mkdir()
    for nb in notebooks:
        shutil.copy(nb, root / nb.name)
    settings = tmp / "lab-settings"
    for rel, value in USER_SETTINGS.items():
        path = settings / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    full_env = {
        **env,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
    }
    token = secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")
    log = tmp / "jupyter-lab.log"
    cmd = [
        str(jupyter),
        "lab",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:  # CI containers run as root; jupyter refuses that without this flag
        cmd.append("--allow-root")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=root)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log, proc)
    deadline = time.monotonic() + timeout
    while not _status_ok(server.url, token):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_lab(server)
            msg = f"jupyter lab did not answer /api/status on port {port}:\n{server.log_tail()}"
            raise RuntimeError(msg)
        time.sleep(0.2)
    return server


def stop_lab(server: LabServer) -> None:
    """Stop the server (SIGTERM, then SIGKILL); its kernels go with it."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)


def lab_env(home: Path, model_cache: Path) -> dict[str, str]:
    """The server's environment: a fresh ``$COREASON_HOME``, the shared model cache, no oracle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREASON_ORACLE_")}
    env["COREASON_HOME"] = str(home)
    env["COREASON_MODEL_CACHE"] = str(model_cache)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class Browser:
    """A Playwright Chromium on Debian's binary (never a downloaded one)."""

    playwright: Any
    browser: Any

    def close(self) -> None:
        self.browser.close()
        self.playwright.stop()


def launch_chromium() -> Browser:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    except Exception:
        pw.stop()
        raise
    return Browser(pw, browser)


# --- JupyterLab through window.jupyterapp -----------------------------------------------------

WAIT_APP = "() => window.jupyterapp !== undefined && window.jupyterapp.shell !== undefined"

KERNEL_IDLE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const kernel = nb && nb.sessionContext && nb.sessionContext.session
    && nb.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && !nb.sessionContext.pendingInput;
}"""

# Start one cell (Run > Run Selected Cell on it); CELL_DONE says when its reply arrived.
# Cells run one at a time, as a reader runs them (galata's runCellByCell does the same): Run > Run
# All Cells sends every request at once and, in JupyterLab 4.6, left the tour's last cells
# unexecuted after its expected BudgetExceededError.
RUN_CELL = """async (i) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  await nb.sessionContext.ready;
  nb.content.activeCellIndex = i;
  void app.commands.execute('notebook:run-cell');
}"""

CELL_DONE = """(i) => {
  const m = window.jupyterapp.shell.currentWidget.content.widgets[i].model;
  return m.executionCount !== null && m.executionState === 'idle';
}"""

# Append a code cell with the given source, run it, return when its reply arrived.
RUN_NEW_CELL = """async ([source, wait]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  nb.content.activeCellIndex = nb.content.widgets.length - 1;
  await app.commands.execute('notebook:insert-cell-below');
  nb.content.activeCell.model.sharedModel.setSource(source);
  const done = app.commands.execute('notebook:run-cell');
  if (wait) {
    await done;
  }
  return nb.content.widgets.length - 1;
}"""


def open_lab(
    browser: Browser, server: LabServer, notebook: str, viewport: tuple[int, int] = (1600, 1000)
) -> Any:
    """A page with JupyterLab started and ``notebook`` open on an idle kernel."""
    page = browser.browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.set_default_timeout(60_000)
    page.goto(server.page_url(notebook))
    page.wait_for_selector("#jupyterlab-splash", state="detached")
    page.wait_for_function(WAIT_APP)
    page.evaluate("async () => { await window.jupyterapp.restored; }")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
    page.wait_for_function(KERNEL_IDLE)
    return page


def run_cells_in_order(page: Any, timeout_s: float, log: Any = print) -> None:
    """Run every code cell top to bottom, each to its reply; fails naming a stuck cell."""
    sources = page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.content.widgets.map("
        "c => c.model.type === 'code' ? c.model.sharedModel.getSource() : null)"
    )
    for i, source in enumerate(sources):
        if source is None:
            continue
        t = time.monotonic()
        page.evaluate(RUN_CELL, i)
        try:
            page.wait_for_function(CELL_DONE, arg=i, timeout=timeout_s * 1000, polling=200)
        except Exception as e:
            msg = f"cell {i} did not finish within {timeout_s:.0f} s: {source[:80]!r}"
            raise AssertionError(msg) from e
        log(f"cell {i} ran in {time.monotonic() - t:5.1f} s: {source.splitlines()[0][:60]}")


RUN_ALL = """async () => {
  const app = window.jupyterapp;
  await app.shell.currentWidget.sessionContext.ready;
  void app.commands.execute('notebook:run-all-cells');
}"""

# Code cells whose run has not finished: no execution count yet, or still executing.
PENDING_CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .map((c, i) => [c, i])
  .filter(([c, i]) => c.model.type === 'code' && c.model.sharedModel.getSource().trim() !== ''
    && (c.model.executionCount === null || c.model.executionState !== 'idle'))
  .map(([c, i]) => i)"""


def run_all(page: Any, timeout_s: float, log: Any = print) -> None:
    """Run the notebook with JupyterLab's own *Run All*, as a researcher would.

    All cells are queued at once; a cell that raises without the ``raises-exception`` tag makes
    the kernel abort the rest, which leaves them without an execution count. Fails naming
    the cells that never ran.
    """
    t = time.monotonic()
    page.evaluate(RUN_ALL)
    page.wait_for_timeout(500)  # let the queue reach the kernel before polling for idle
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not page.evaluate(PENDING_CELLS) and page.evaluate(KERNEL_IDLE):
            log(f"Run All finished in {time.monotonic() - t:5.1f} s")
            return
        page.wait_for_timeout(500)
    pending = page.evaluate(PENDING_CELLS)
    msg = f"Run All left cells {pending} unrun or running after {timeout_s:.0f} s"
    raise AssertionError(msg)


def cell_output_text(page: Any, index: int) -> str:
    return str(
        page.evaluate(
            "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node"
            ".querySelector('.jp-OutputArea').textContent",
            index,
        )
    )


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path
