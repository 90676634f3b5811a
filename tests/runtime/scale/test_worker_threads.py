"""What a cluster's workers get on one machine: a share of its cores (torch threads), the
model loaded before they take a request, and the stores they share (the converted models,
the KV disk tier)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import Coordinator, RuntimeConfig
from coreason_runtime._exceptions import ConfigurationError
from coreason_runtime.cli import main
from coreason_runtime.scale import LocalCluster, WorkerOptions
from coreason_runtime.scale._cluster import threads_per_worker
from coreason_runtime.scale._worker import use_threads, warm_tiers
from coreason_runtime.tensor import ScriptedSteerableTier, ScriptedTier
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec


@pytest.mark.parametrize(
    ("workers", "cores", "each"), [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2)]
)
def test_the_cores_are_shared_out_among_the_workers(workers: int, cores: int, each: int) -> None:
    assert threads_per_worker(workers, cores) == each


def test_a_cluster_gives_each_worker_its_share_unless_told(tmp_path: Path) -> None:
    shared = LocalCluster(tmp_path / "a", workers=2)
    command = shared.worker_command("w1")
    assert command[command.index("--threads") + 1] == str(threads_per_worker(2))
    fixed = LocalCluster(tmp_path / "b", workers=2, threads=3)
    command = fixed.worker_command("w1")
    assert command[command.index("--threads") + 1] == "3"


@pytest.fixture
def torch_threads() -> Iterator[Any]:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_a_worker_sets_its_torch_threads(torch_threads: Any) -> None:
    target = 1 if torch_threads.get_num_threads() != 1 else 2
    assert use_threads(target) == target
    assert torch_threads.get_num_threads() == target
    assert use_threads(None) is None  # torch left alone
    assert torch_threads.get_num_threads() == target
    with pytest.raises(ConfigurationError, match="at least 1"):
        use_threads(0)


class _CountingTier(ScriptedSteerableTier):
    def __init__(self) -> None:
        super().__init__("local", ['{"ok": true}'])
        self.compiled: list[SchemaSpec] = []

    def compile(self, spec: SchemaSpec) -> CompiledSchema:
        self.compiled.append(spec)
        return super().compile(spec)


def test_warming_compiles_on_every_steerable_tier_only(tmp_path: Path) -> None:
    steerable = _CountingTier()
    with Coordinator(RuntimeConfig(home=tmp_path, oracle=None)) as rt:
        rt.router.set_tiers([steerable, ScriptedTier("oracle", ['{"ok": true}'])])
        assert warm_tiers(rt) == ["local"]
    assert len(steerable.compiled) == 1


def test_coreason_worker_takes_threads_and_no_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[WorkerOptions] = []
    monkeypatch.setattr("coreason_runtime.scale.run_worker", seen.append)
    main(["worker", "--redis", "redis://127.0.0.1:1", "--threads", "3", "--no-warm"])
    monkeypatch.setenv("COREASON_WORKER_THREADS", "2")
    main(["worker", "--redis", "redis://127.0.0.1:1"])
    assert [(o.threads, o.warm) for o in seen] == [(3, False), (2, True)]


def test_workers_share_the_model_cache_and_the_kv_disk_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COREASON_MODEL_CACHE", str(tmp_path / "models"))
    cluster = LocalCluster(tmp_path / "c", workers=2, env={"COREASON_SUBGOAL_CACHE": "0"})
    one, two = (cluster.worker_env(tmp_path / "c" / "workers" / n) for n in ("w1", "w2"))
    assert one["COREASON_HOME"] != two["COREASON_HOME"]  # each its own home and log
    for env in (one, two):  # converted once, loaded by all; KV written by one, read by all
        assert env["COREASON_MODEL_CACHE"] == str(tmp_path / "models")
        assert env["COREASON_KV_DIR"] == str(cluster.workdir / "kv")
        assert env["OMP_NUM_THREADS"] == str(cluster.threads)
        assert env["COREASON_SUBGOAL_CACHE"] == "0"
    mine = LocalCluster(tmp_path / "d", env={"COREASON_KV_DIR": str(tmp_path / "elsewhere")})
    assert mine.worker_env(tmp_path)["COREASON_KV_DIR"] == str(tmp_path / "elsewhere")


def test_the_kv_disk_tier_lives_where_coreason_kv_dir_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COREASON_KV_DIR", str(tmp_path / "shared-kv"))
    assert RuntimeConfig(home=tmp_path / "home").kv_dir == tmp_path / "shared-kv"
    monkeypatch.delenv("COREASON_KV_DIR")
    assert RuntimeConfig(home=tmp_path / "home").kv_dir is None  # $COREASON_HOME/kv


def test_a_runtime_puts_its_kv_blocks_in_the_shared_folder(tmp_path: Path) -> None:
    from tests._fixtures.serve import tiny_model_folder

    config = RuntimeConfig(
        home=tmp_path / "home", model=str(tiny_model_folder()), kv_dir=tmp_path / "shared-kv"
    )
    with Coordinator(config) as rt:
        disk = rt.kv.disk
        assert disk is not None
        assert disk.dir.parent == tmp_path / "shared-kv"
