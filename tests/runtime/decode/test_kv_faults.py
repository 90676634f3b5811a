"""Faults in the disk tier: each is detected, the bad copy dropped and never used, and the
reader still gets an exact (possibly shorter) prefix; concurrent processes share the files."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from coreason_runtime import EventBus, EventType
from coreason_runtime.decode import BlockStore, _disk
from coreason_runtime.decode._blocks import chain_of
from coreason_runtime.events import KVFault

from tests.runtime.decode._kv_helpers import (
    cache_kv,
    disk_store,
    empty_cache,
    toy_cache,
    toy_kv,
    toy_space,
)

A = list(range(1, 23))  # blocks of 4: [0,4) [4,8) [8,12) [12,16) [16,20) [20,22)
REPO = Path(__file__).resolve().parents[3]


def on_disk_only(root: Path, bus: EventBus | None = None) -> BlockStore:
    """A chain A written by one store, and a second store on the same folder (a restart)."""
    first = disk_store(root)
    first.put(A, toy_cache(A))
    first.close()
    return disk_store(root, bus, warm=False)


def third_block_file(root: Path, layer: int = 0) -> Path:
    ref = chain_of(A, 4)[2]
    return root / toy_space().id / ref.hex[:2] / f"{ref.hex}.{layer:03d}.kvb"


def faults(bus: EventBus) -> list[str]:
    return [e.data.reason for e in bus.history([EventType.KV_FAULT]) if isinstance(e.data, KVFault)]


def restore_stops_at_the_third_block(store: BlockStore, bus: EventBus, reason: str) -> None:
    cache = empty_cache()
    assert store.lookup(A, cache) == 8
    assert torch.equal(cache_kv(cache), toy_kv(A[:8]))
    assert faults(bus) == [reason]


def test_a_flipped_payload_byte_fails_the_checksum(tmp_path: Path) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    path = third_block_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    restore_stops_at_the_third_block(store, bus, "checksum")
    assert not path.exists()  # dropped, so the next writer replaces it


def test_a_truncated_file_is_detected(tmp_path: Path) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    path = third_block_file(tmp_path, layer=1)
    path.write_bytes(path.read_bytes()[:-8])
    restore_stops_at_the_third_block(store, bus, "truncated")


def test_a_damaged_header_is_detected(tmp_path: Path) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    path = third_block_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[_disk.PRELUDE.size + 3] ^= 0x20
    path.write_bytes(bytes(data))
    restore_stops_at_the_third_block(store, bus, "header")


def test_a_block_of_another_model_under_this_name_is_refused(tmp_path: Path) -> None:
    other = disk_store(tmp_path, space=toy_space(model="other"))
    other.put(A, toy_cache(A))
    other.close()
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    theirs = (
        tmp_path
        / toy_space(model="other").id
        / third_block_file(tmp_path).relative_to(tmp_path / toy_space().id)
    )
    third_block_file(tmp_path).write_bytes(theirs.read_bytes())
    restore_stops_at_the_third_block(store, bus, "namespace")


def test_a_full_disk_is_reported_and_requests_still_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_disk.os, "replace", no_space)
    bus = EventBus()
    store = disk_store(tmp_path, bus, ram_tokens=100)
    store.put(A, toy_cache(A))
    assert store.flush()
    assert "disk_full" in faults(bus)
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.kvb"))
    cache = empty_cache()
    assert store.lookup(A, cache) == len(A)  # RAM still serves it
    assert torch.equal(cache_kv(cache), toy_kv(A))


def test_a_writer_that_died_mid_write_leaves_nothing_a_reader_uses(tmp_path: Path) -> None:
    first = disk_store(tmp_path)
    first.put(A[:8], toy_cache(A[:8]))
    first.close()
    # a crash between write and rename: the block's files exist only under .tmp names
    ref = chain_of(A, 4)[2]
    folder = tmp_path / toy_space().id / ref.hex[:2]
    folder.mkdir(parents=True, exist_ok=True)
    stale = [folder / f"{ref.hex}.{layer:03d}.kvb.999.1.tmp" for layer in range(2)]
    for p in stale:
        p.write_bytes(b"CKVB\x01\x00 half a block")
        os.utime(p, (time.time() - 2 * _disk.STALE_TMP_S,) * 2)
    store = disk_store(tmp_path, warm=False)
    cache = empty_cache()
    assert store.lookup(A, cache) == 8
    assert torch.equal(cache_kv(cache), toy_kv(A[:8]))
    assert not any(p.exists() for p in stale)  # the scan removed the dead writer's files


def test_a_deleted_cache_folder_mid_run_is_recovered(tmp_path: Path) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    shutil.rmtree(tmp_path)
    assert store.lookup(A, empty_cache()) == 0
    assert "missing" in faults(bus)
    store.put(A, toy_cache(A))  # the folder is made again
    store.close()
    again = disk_store(tmp_path, warm=False)
    assert again.lookup(A, empty_cache()) == len(A)


_WRITER = """
import sys
from pathlib import Path
sys.path[:0] = [{src!r}, {repo!r}]
from tests.runtime.decode._kv_helpers import disk_store, toy_cache
A = list(range(1, 23))
for n in range(4, 23):
    s = disk_store(Path({root!r}), warm=False)
    s.put(A[:n], toy_cache(A[:n]))
    s.close()
"""


def test_readers_see_whole_blocks_while_other_processes_write_the_same_files(
    tmp_path: Path,
) -> None:
    code = _WRITER.format(src=str(REPO / "runtime" / "src"), repo=str(REPO), root=str(tmp_path))
    writers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    reader = disk_store(tmp_path, warm=False, ram_tokens=0)
    bad: list[int] = []

    def read_until_done() -> None:
        while any(w.poll() is None for w in writers):
            cache = empty_cache()
            n = reader.lookup(A, cache)
            if n and not torch.equal(cache_kv(cache), toy_kv(A[:n])):
                bad.append(n)

    t = threading.Thread(target=read_until_done)
    t.start()
    codes = [w.wait(120) for w in writers]
    t.join(30)
    assert codes == [0, 0] and bad == []
    cache = empty_cache()
    assert reader.lookup(A, cache) == len(A)
    assert torch.equal(cache_kv(cache), toy_kv(A))
