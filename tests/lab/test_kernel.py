"""Controls while a cell runs, in a real kernel: the pause magic, and the comm on a subshell."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab._kernel import SLOW_TIER, Kernel

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("kernel-home")
    # The router's subgoal cache is on: controls must act on requests it does not answer (each
    # test asks its own question; a repeated one would be answered from the cache, no decode).
    k = Kernel(
        {"COREASON_HOME": str(home), "PYTHONPATH": str(ROOT), "COREASON_SUBGOAL_CACHE": "1"},
        cwd=str(ROOT),
    )
    k.run(SLOW_TIER)
    yield k
    k.close()


def test_pause_magic_stops_a_background_ask_until_resume(kernel: Kernel) -> None:
    kernel.run("%coreason budget bg 1000000")
    kernel.run("_tier.finish.clear()")
    kernel.run(
        "%%coreason ask Answer -w bg --background -n 5000 -o bg_value\n"
        "slow question in the background"
    )
    kernel.run("assert _until(lambda: _m.controls.status('bg').tokens_out > 0)")
    kernel.run("%coreason pause bg")  # the next cell, while the ask still decodes
    out = kernel.run(
        "assert _until(lambda: _m.controls.status('bg').waiting == 1)\n"
        "n1 = bg_value_handle.tokens_out; time.sleep(0.2); n2 = bg_value_handle.tokens_out\n"
        "print(bg_value_handle.status, n1 == n2)"
    )
    assert out.split() == ["paused", "True"]
    kernel.run("%coreason resume bg\n_tier.finish.set()")
    out = kernel.run("print(bg_value_handle.wait(60), bg_value_handle.error, bg_value.value)")
    assert out.split() == ["done", "None", "1"]


def test_comm_intent_on_a_subshell_pauses_a_foreground_cell(kernel: Kernel) -> None:
    kernel.run("%coreason budget fg 1000000")
    comm_id = uuid.uuid4().hex
    kernel.send_shell("comm_open", {"comm_id": comm_id, "target_name": "coreason", "data": {}})
    kernel.drain_iopub(lambda d: d.get("type") == "hello")
    sub = kernel.create_subshell()
    warm = kernel.execute_nowait("1", subshell=sub)
    assert kernel.shell_reply(warm)["content"]["status"] == "ok"
    kernel.run("_tier.finish.clear()")
    running = kernel.execute_nowait(
        "%%coreason ask Answer -w fg -n 20000 -o fg_value\nslow question in the foreground"
    )
    # The comm's last send before the intent is an event batch sent while the blocked main
    # cell is the kernel's current request: the intent must still go to the subshell it names
    # (ipykernel >= 7.4 re-routes it to the main shell unless the bridge turns that off).
    kernel.drain_iopub(lambda d: "attempt.started" in {e["type"] for e in d.get("events", [])})
    kernel.send_shell(
        "comm_msg",
        {"comm_id": comm_id, "data": {"type": "intent", "intent": "pause", "workflow_id": "fg"}},
        subshell=sub,
    )
    kernel.drain_iopub(lambda d: d.get("type") == "ack")
    acks = [m for m in kernel.comm_msgs if m.get("type") == "ack"]  # event batches interleave
    assert acks[-1] == {"type": "ack", "intent": "pause", "workflow_id": "fg", "state": "paused"}
    check = kernel.execute_nowait(
        "assert _until(lambda: _m.controls.status('fg').waiting == 1), _m.controls.status('fg')",
        subshell=sub,
    )
    reply = kernel.shell_reply(check)["content"]
    assert reply["status"] == "ok", reply.get("evalue")
    kernel.send_shell(
        "comm_msg",
        {"comm_id": comm_id, "data": {"type": "intent", "intent": "resume", "workflow_id": "fg"}},
        subshell=sub,
    )
    done = kernel.execute_nowait("_tier.finish.set()", subshell=sub)
    kernel.shell_reply(done)
    assert kernel.shell_reply(running, timeout=120)["content"]["status"] == "ok"
    kernel.drain_iopub(lambda d: "workflow.resumed" in {e["type"] for e in d.get("events", [])})
    assert kernel.run("print(fg_value.value)").strip() == "1"
    events = [e for m in kernel.comm_msgs if m.get("type") == "events" for e in m["events"]]
    kinds = [e["type"] for e in events if e["workflow_id"] == "fg"]
    assert kinds.index("workflow.paused") < kinds.index("workflow.resumed")


def test_dashboard_button_on_a_subshell_pauses_a_foreground_cell(kernel: Kernel) -> None:
    """The dashboard's buttons were opened by a cell on the main shell; a click that the
    frontend sends on a subshell must be handled there, not queued behind the running cell."""
    kernel.run("%coreason budget fg2 1000000")
    ids = kernel.run(
        "_d = %coreason dashboard --workflow fg2\n"
        "print(_d.buttons['pause'].model_id, _d.buttons['resume'].model_id)"
    ).split()
    sub = kernel.create_subshell()
    kernel.run("_tier.finish.clear()")
    running = kernel.execute_nowait(
        "%%coreason ask Answer -w fg2 -n 20000 -o fg2_value\n"
        "a question asked while the dashboard is open"
    )
    kernel.drain_iopub(lambda d: "attempt.started" in {e["type"] for e in d.get("events", [])})
    click = {"method": "custom", "content": {"event": "click"}}
    kernel.send_shell("comm_msg", {"comm_id": ids[0], "data": click}, subshell=sub)
    check = kernel.execute_nowait(
        "assert _until(lambda: _m.controls.status('fg2').waiting == 1), _m.controls.status('fg2')",
        subshell=sub,
    )
    reply = kernel.shell_reply(check)["content"]
    assert reply["status"] == "ok", reply.get("evalue")
    kernel.send_shell("comm_msg", {"comm_id": ids[1], "data": click}, subshell=sub)
    done = kernel.execute_nowait(
        "assert _until(lambda: _m.controls.status('fg2').state == 'running')\n_tier.finish.set()",
        subshell=sub,
    )
    assert kernel.shell_reply(done)["content"]["status"] == "ok"
    assert kernel.shell_reply(running, timeout=120)["content"]["status"] == "ok"
    assert kernel.run("print(fg2_value.value)").strip() == "1"
    kernel.run("_d.close()")
