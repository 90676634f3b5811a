"""Moving blocks between the store's tiers: capacity, the disk writer, the disk readers.

The write side of :class:`~coreason_runtime.decode._store.BlockStore`: which blocks leave a
tier when it is over capacity (a paused session's first, recurring ones last, least recently
used first within each), writing them to disk on the writer thread before their RAM copy is
dropped, trimming the disk tier, and reading blocks back on the reader threads (a fault found
there drops the file and publishes ``kv.fault``; the block is then recomputed by its reader).
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventType
from coreason_runtime.decode._blocks import BlockRef
from coreason_runtime.decode._disk import BlockFault, DiskFull, DiskTier

if TYPE_CHECKING:
    import torch

    from coreason_runtime.decode._blocks import KVSpace
    from coreason_runtime.decode._prefetch import Background, DeviceCopies

__all__ = ["Entry", "MovesMixin"]

DISK_FULL_BACKOFF_S = 5.0


@dataclass(eq=False)
class Entry:
    """One block group (every layer of one block) the store holds in memory or is moving."""

    ref: BlockRef
    nbytes: int = 0
    ram: list[torch.Tensor] | None = None
    gpu: list[torch.Tensor] | None = None
    on_disk: bool = False
    writing: bool = False
    loading: Future[bool] | None = None
    leave_ram: bool = False  # drop the RAM copy once the write in flight lands
    pins: int = 0  # paused sessions holding it
    reads: int = 0  # requests that reused it
    busy: int = 0  # restores copying from it right now
    speculative: bool = False  # brought in by a prediction and not read since
    last: int = 0

    @property
    def fast(self) -> bool:
        return self.ram is not None or self.gpu is not None


class MovesMixin:
    """The write side of the block store (fields are the store's)."""

    space: KVSpace | None
    disk: DiskTier | None
    background: Background
    ram_bytes_cap: int | None
    ram_tokens_cap: int | None
    gpu_bytes_cap: int | None
    disk_bytes_cap: int | None
    _lock: threading.RLock
    _entries: dict[bytes, Entry]
    _ram: list[int]
    _leaving: list[int]
    _gpu: int
    _burst: list[int]
    _disk_full_until: float
    _copies: DeviceCopies | None
    _pin: bool

    if TYPE_CHECKING:

        def _emit(self, type_: EventType, /, **data: Any) -> None: ...

        def _touch(self, e: Entry) -> None: ...

        def _set_ram(self, e: Entry, tensors: list[torch.Tensor] | None) -> None: ...

        def _set_gpu(self, e: Entry, tensors: list[torch.Tensor] | None) -> None: ...

        def _add_entry(self, ref: BlockRef) -> Entry: ...

        def _drop_entry(self, e: Entry) -> None: ...

    # --- capacity ----------------------------------------------------------------------------

    def _ram_over(self) -> bool:
        b, t = self._ram[0] - self._leaving[0], self._ram[1] - self._leaving[1]
        over_b = self.ram_bytes_cap is not None and b > self.ram_bytes_cap
        return over_b or (self.ram_tokens_cap is not None and t > self.ram_tokens_cap)

    def _disk_ok(self) -> bool:
        return self.disk is not None and time.monotonic() >= self._disk_full_until

    @staticmethod
    def _rank(e: Entry) -> tuple[int, int]:
        """Eviction order: predicted blocks no one has read yet (their disk copy stays, so a
        wrong prediction never pushes anything else out), paused sessions' blocks, then
        ordinary ones, then recurring ones; least recently used first within each."""
        if e.speculative:
            return -1, e.last
        if e.reads >= 2:
            return 2, e.last
        return (0 if e.pins else 1), e.last

    def _enforce(self) -> None:
        """Move blocks down until every tier is within its capacity."""
        if self._copies is not None:
            self._enforce_gpu()
        dropped = [0, 0]
        writes: list[Entry] = []
        with self._lock:
            if not self._ram_over():
                return
            movable = [
                e
                for e in self._entries.values()
                if e.ram is not None and not e.busy and not e.leave_ram and e.loading is None
            ]
            for e in sorted(movable, key=self._rank):
                if not self._ram_over():
                    break
                if e.on_disk or e.gpu is not None or not self._disk_ok():
                    dropped[0] += 1
                    dropped[1] += e.nbytes
                    self._set_ram(e, None)
                    self._drop_entry(e)
                    continue
                e.leave_ram = True  # written first (or being written), then dropped
                self._leaving[0] += e.nbytes
                self._leaving[1] += len(e.ref.tokens)
                if not e.writing:
                    e.writing = True
                    writes.append(e)
        for e in writes:
            self.background.submit_write(functools.partial(self._write, e))
        if dropped[0]:
            self._emit(
                EventType.KV_DEMOTED,
                blocks=dropped[0],
                bytes=dropped[1],
                src="ram",
                dst="disk" if self.disk is not None else "none",
                reason="capacity",
            )

    def _enforce_gpu(self) -> None:
        """Device blocks over the GPU capacity move to pinned RAM (least valuable first)."""
        assert self._copies is not None
        if self.gpu_bytes_cap is None:
            return
        with self._lock:
            over = self._gpu - self.gpu_bytes_cap
            victims = []
            for e in sorted((e for e in self._entries.values() if e.gpu), key=self._rank):
                if over <= 0:
                    break
                if not e.busy:
                    victims.append(e)
                    e.busy += 1
                    over -= e.nbytes
        for e in victims:
            host = e.ram if e.ram is not None else self._copies.to_host(e.gpu or [])
            with self._lock:
                e.busy -= 1
                if e.ram is None:
                    self._set_ram(e, host)
                self._set_gpu(e, None)
        if victims:
            moved = sum(e.nbytes for e in victims)
            self._emit(
                EventType.KV_DEMOTED,
                blocks=len(victims),
                bytes=moved,
                src="gpu",
                dst="ram",
                reason="capacity",
            )

    # --- the disk ----------------------------------------------------------------------------

    def _write(self, e: Entry) -> None:
        """On the writer thread: put ``e`` on disk, then drop its RAM copy if it was leaving."""
        assert self.disk is not None
        tensors = e.ram if e.ram is not None else e.gpu
        ok = False
        if tensors is not None and self._disk_ok():
            try:
                self.disk.write(e.ref, tensors)
                ok = True
            except DiskFull as err:
                self._disk_full_until = time.monotonic() + DISK_FULL_BACKOFF_S
                self._emit(EventType.KV_FAULT, reason="disk_full", detail=str(err), blocks=1)
            except OSError as err:
                self._emit(EventType.KV_FAULT, reason="write_error", detail=str(err), blocks=1)
        with self._lock:
            e.writing = False
            e.on_disk = e.on_disk or ok
            if e.leave_ram and not e.busy:
                self._burst[0] += 1
                self._burst[1] += e.nbytes
                self._set_ram(e, None)
                self._drop_entry(e)
        if ok:
            self._trim_disk()

    def _writes_idle(self) -> None:
        with self._lock:
            (blocks, nbytes), self._burst = self._burst, [0, 0]
        if blocks:
            self._emit(
                EventType.KV_DEMOTED,
                blocks=blocks,
                bytes=nbytes,
                src="ram",
                dst="disk",
                reason="capacity",
            )

    def _trim_disk(self) -> None:
        """Remove least recently used files beyond the disk capacity (never a block only a
        paused session still has, nor one being read)."""
        if self.disk is None or self.disk_bytes_cap is None:
            return
        removed = [0, 0]
        for block in self.disk.lru():
            if self.disk.bytes <= self.disk_bytes_cap:
                break
            with self._lock:
                e = self._entries.get(block.ref.digest)
                if e is not None and (e.busy or e.loading is not None or e.writing):
                    continue
                if e is not None and e.pins and not e.fast:
                    continue
                if e is not None:
                    e.on_disk = False
                    self._drop_entry(e)
            removed[0] += 1
            removed[1] += self.disk.remove(block.ref.digest)
        if removed[0]:
            self._emit(
                EventType.KV_DEMOTED,
                blocks=removed[0],
                bytes=removed[1],
                src="disk",
                dst="none",
                reason="capacity",
            )

    def _read(self, e: Entry, done: Future[bool]) -> None:
        """On a reader thread: bring ``e`` from disk into RAM (and onto the device)."""
        assert self.disk is not None
        layers = self.space.layers if self.space is not None else 0
        tensors: list[torch.Tensor] | None = None
        try:
            tensors = [self.disk.read(e.ref, i, pin=self._pin) for i in range(layers)]
        except BlockFault as fault:
            self.disk.remove(e.ref.digest)
            self._emit(EventType.KV_FAULT, reason=fault.reason, detail=fault.detail, blocks=1)
        gpu = self._copies.to_device(tensors) if self._copies and tensors else None
        with self._lock:
            e.loading = None
            if tensors is None:
                e.on_disk = False
            else:
                e.nbytes = sum(t.numel() * t.element_size() for t in tensors)
                self._set_ram(e, tensors)
                if gpu is not None:
                    self._set_gpu(e, gpu)
                self._touch(e)
                self.disk.touch(e.ref.digest)
            if not e.fast:
                self._drop_entry(e)
        done.set_result(tensors is not None)
        self._enforce()

    def _start_read(self, ref: BlockRef) -> tuple[Future[bool] | None, bool]:
        """Under the lock: a future for ``ref`` arriving in RAM, and whether this call
        started the read; (None, False) if it is in a fast tier already or nowhere."""
        e = self._entries.get(ref.digest)
        if e is not None and e.fast:
            return None, False
        if e is not None and e.loading is not None:
            return e.loading, False
        if self.disk is None or not self.disk.present(ref):
            return None, False
        e = self._add_entry(ref)
        e.on_disk = True
        done: Future[bool] = Future()
        e.loading = done
        self.background.submit_read(functools.partial(self._read, e, done))
        return done, True
