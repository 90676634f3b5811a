"""A real IPython kernel driven over ZMQ with jupyter_client: cells, comms and subshells."""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from jupyter_client.manager import start_new_kernel

# A tier that decodes like a small local model: one token every ``delay`` seconds, each
# charged to the meter as it is produced (so the workflow's controls see every token), until the
# test sets ``finish`` (or max_tokens is reached), so a test never races the decode's end.
SLOW_TIER = """
import threading, time
from pydantic import BaseModel
from coreason_runtime import Coordinator
from coreason_runtime.tensor import BlackBoxTier, TierOutput

class Answer(BaseModel):
    value: int

class SlowTier(BlackBoxTier):
    name, model_name = "local", "slow"
    def __init__(self, delay=0.01):
        self.delay, self.finish = delay, threading.Event()
    def complete(self, request, meter):
        meter.charge(tokens_in=10)
        n = 0
        while n < request.max_tokens and not self.finish.is_set():
            time.sleep(self.delay)
            meter.charge(tokens_out=1)
            n += 1
        return TierOutput(text='{"value": 1}', tokens_in=10, tokens_out=n, model="slow")

_tier = SlowTier()
Coordinator.default().router.set_tiers([_tier])
%load_ext coreason_lab
_m = get_ipython().magics_manager.registry["CoreasonMagics"]
def _until(pred, timeout=90.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return False
"""


class Kernel:
    """One kernel process with its client; ``env`` is added to the kernel's environment."""

    def __init__(self, env: dict[str, str], cwd: str | None = None) -> None:
        full = {**os.environ, **env}
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=full, cwd=cwd)
        self.comm_msgs: list[dict[str, Any]] = []

    def run(self, code: str, timeout: float = 60.0) -> str:
        """Execute ``code`` on the main shell; returns stdout. Raises on an error reply.

        A request the kernel aborted unrun (ipykernel aborts what reaches it while it is still
        clearing its queue after an error) is sent again, at most twice.
        """
        for _ in range(3):
            out: list[str] = []
            reply = self.kc.execute_interactive(
                code, timeout=timeout, output_hook=lambda m, out=out: self._hook(m, out)
            )
            if reply["content"]["status"] != "aborted":
                break
            time.sleep(0.2)
        if reply["content"]["status"] != "ok":
            c = reply["content"]
            msg = f"{c.get('ename')}: {c.get('evalue')}\n" + "\n".join(c.get("traceback", []))
            raise RuntimeError(msg)
        return "".join(out)

    def _hook(self, msg: dict[str, Any], out: list[str]) -> None:
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "comm_msg":
            self.comm_msgs.append(msg["content"]["data"])

    def send_shell(
        self, msg_type: str, content: dict[str, Any], subshell: str | None = None
    ) -> str:
        msg = self.kc.session.msg(msg_type, content)
        if subshell is not None:
            msg["header"]["subshell_id"] = subshell
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def execute_nowait(self, code: str, subshell: str | None = None) -> str:
        return self.send_shell(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            subshell,
        )

    def shell_reply(self, msg_id: str, timeout: float = 60.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = self.kc.get_shell_msg(timeout=0.5)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg  # type: ignore[no-any-return]
        raise TimeoutError(msg_id)

    def create_subshell(self) -> str:
        self.kc.control_channel.send(self.kc.session.msg("create_subshell_request", {}))
        reply = self.kc.control_channel.get_msg(timeout=20)
        return str(reply["content"]["subshell_id"])

    def drain_iopub(self, until: Any = None, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Read iopub comm messages until ``until(data)`` is true for one (or the timeout)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["header"]["msg_type"] == "comm_msg":
                data = msg["content"]["data"]
                self.comm_msgs.append(data)
                if until is not None and until(data):
                    break
        return self.comm_msgs

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
