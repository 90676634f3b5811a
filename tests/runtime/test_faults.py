"""Fault injection in the suite: a few kill -9 trials per victim (the benchmark runs 100).

After each kill: the ledger equals its own history with nothing reserved and Ω kept, nothing
is left orphaned, the next start recovers, and the audit log tells what happened.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests._fixtures.faults import kill_coordinator, kill_kernel, kill_serve, kill_tool_run
from tests._fixtures.serve import tiny_model_folder


@pytest.mark.parametrize("seed", range(2))
def test_a_coordinator_killed_mid_request_leaves_an_exact_ledger(tmp_path: Path, seed: int) -> None:
    trial = kill_coordinator(tmp_path, random.Random(seed))
    assert trial.clean, trial


@pytest.mark.parametrize("seed", range(2))
def test_a_tool_run_killed_mid_commit_is_recorded_failed_and_leaves_nothing(
    tmp_path: Path, seed: int
) -> None:
    trial = kill_tool_run(tmp_path, random.Random(seed))
    assert trial.clean, trial
    assert trial.detail["state"] == "failed"


@pytest.mark.notebook
def test_a_kernel_killed_mid_ask_leaves_an_exact_ledger(tmp_path: Path) -> None:
    trial = kill_kernel(tmp_path, random.Random(0))
    assert trial.clean, trial
    assert trial.detail["charges"] == 1  # the ask in flight, recovered at its checkpoint


@pytest.mark.serve
def test_serve_killed_mid_stream_leaves_the_client_ledger_exact_and_restarts(
    tmp_path: Path,
) -> None:
    trial, restarted = kill_serve(tmp_path, random.Random(0), str(tiny_model_folder()))
    restarted.stop()
    assert trial.clean, trial
    assert trial.detail["client_error"]  # a typed error reached the client
