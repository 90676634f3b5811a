"""Jupyter's ■ in a real kernel: SIGINT stops the request, the cell ends with one line, the
ledger holds exactly what ran and the workflow answers the next cell."""

from __future__ import annotations

import os
import queue
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab._kernel import Kernel

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")

SETUP = """
import time
from pydantic import BaseModel
from coreason_runtime import Coordinator
from coreason_runtime.tensor import ScriptedTier

class Answer(BaseModel):
    value: int

rt = Coordinator.default()
rt.router.cache = None
rt.budgets.set("wf", ceiling=10_000_000)
%load_ext coreason_lab
def _until(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return False
"""

# ~400 tokens at 10 ms each: a decode long enough to be interrupted
LONG_TIER = """
rt.router.set_tiers([ScriptedTier(
    "local", ['{"value": ' + " ".join("4" * 400) + "}"], repeat_last=True, bus=rt.bus, delay=0.01
)])
rt.budgets.reset("wf")
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("kernel-home")
    path = os.pathsep.join([str(ROOT / "runtime" / "src"), str(ROOT)])  # this checkout's code
    k = Kernel({"COREASON_HOME": str(home), "PYTHONPATH": path}, cwd=str(ROOT))
    k.run(SETUP)
    yield k
    k.close()


def interrupt_when_tokens_flow(kernel: Kernel, code: str) -> dict[str, object]:
    """Run ``code``; once the workflow's tokens flow (seen from a subshell), interrupt the kernel
    as Jupyter's ■ does (SIGINT to the kernel process). Returns the cell's reply content."""
    sub = kernel.create_subshell()
    before = int(kernel.run("print(rt.controls.status('wf').tokens_out)"))
    cell = kernel.execute_nowait(code)
    probe = kernel.execute_nowait(
        f"assert _until(lambda: rt.controls.status('wf').tokens_out > {before})", subshell=sub
    )
    assert kernel.shell_reply(probe)["content"]["status"] == "ok"
    kernel.km.interrupt_kernel()
    reply = kernel.shell_reply(cell)
    return reply["content"]  # type: ignore[no-any-return]


def ledger(kernel: Kernel) -> tuple[int, float, float]:
    out = kernel.run("l = rt.budgets.get('wf'); print(l.tokens_out, l.spent, l.reserved)")
    n, spent, reserved = out.split()
    return int(n), float(spent), float(reserved)


def drain(kernel: Kernel) -> None:
    while True:
        try:
            kernel.kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return


@pytest.mark.parametrize(
    "code",
    [
        "%%coreason ask Answer -w wf -n 1000\nlong question",
        "res = rt.router.generate(Answer, 'a long question', workflow_id='wf', max_tokens=1000)",
    ],
    ids=["magic", "plain-cell"],
)
def test_the_kernels_interrupt_stops_a_request_with_one_line(kernel: Kernel, code: str) -> None:
    kernel.run(LONG_TIER)
    drain(kernel)
    content = interrupt_when_tokens_flow(kernel, code)
    assert content["status"] == "error"
    assert content["ename"] == "KeyboardInterrupt"
    lines = ANSI.sub("", "\n".join(content["traceback"])).strip().splitlines()  # type: ignore[arg-type]
    tokens, spent, reserved = ledger(kernel)
    assert len(lines) == 1
    assert lines[0].startswith(f"KeyboardInterrupt: interrupted after {tokens} tokens")
    assert f"C {spent:g} charged to workflow 'wf', nothing left reserved" in lines[0]
    assert reserved == 0 and 0 < tokens < 400
    # the workflow answers the next cell
    kernel.run("rt.router.set_tiers([ScriptedTier('local', ['{\"value\": 7}'], bus=rt.bus)])")
    out = kernel.run("print(rt.router.generate(Answer, 'q', workflow_id='wf').value.value)")
    assert out.strip() == "7"
