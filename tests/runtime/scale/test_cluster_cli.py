"""``coreason cluster up | status | down`` and ``coreason worker`` from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from coreason_runtime.cli import main
from coreason_runtime.scale._servers import free_port

from tests.runtime.scale._helpers import wait_for


def test_a_worker_needs_the_deployments_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COREASON_REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="--redis URL or COREASON_REDIS_URL"):
        main(["worker", "--temporal", "127.0.0.1:1"])


@pytest.mark.temporal
@pytest.mark.redis
@pytest.mark.timeout(300)
def test_cluster_up_starts_servers_and_workers_and_down_stops_them(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coreason_runtime.cli",
            "cluster",
            "up",
            "--dir",
            str(folder),
            "--workers",
            "2",
            "--setup",
            "coreason_runtime.scale._demo:paced",
            "--temporal-port",
            str(free_port()),
            "--redis-port",
            str(free_port()),
        ],
        env={**os.environ, "COREASON_HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: (folder / "cluster.json").is_file() or up.poll() is not None,
            "the cluster to come up",
            timeout=240,
        )
        assert up.poll() is None, up.stderr.read() if up.stderr else ""
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "coreason_runtime.cli",
                "cluster",
                "status",
                "--dir",
                str(folder),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        workers = json.loads(status.stdout)
        assert sorted(w["name"] for w in workers) == ["w1", "w2"]
        assert all(w["alive"] for w in workers)
        subprocess.run(
            [sys.executable, "-m", "coreason_runtime.cli", "cluster", "down", "--dir", str(folder)],
            check=True,
        )
        assert up.wait(timeout=120) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert not (folder / "cluster.json").exists()
    _, err = up.communicate()
    assert b"ClusterClient(rt, temporal=" in err
