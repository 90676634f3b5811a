"""The KV block store: immutable KV blocks in tiers (GPU, RAM, disk), restored on demand.

Sessions keep a contiguous ``DynamicCache`` while they decode; the store holds KV *between*
decodes: the prefix of every finished request (so a later prompt sharing it skips that much
prefill, in this kernel, in ``coreason serve`` and after a restart, through the disk), and
the whole KV of a paused session (so a paused session holds no RAM beyond the tier's
capacity). Blocks are addressed by content (:mod:`._blocks`), so two sessions, requests or
processes with the same prefix share them, and a batch of sequences shares them the same way.

Eviction is least-recently-used plus structure: a paused session's blocks leave RAM first,
then ordinary blocks, and blocks read by two or more requests (a recurring system prompt, a
few-shot block) last. A block leaving RAM is written to disk first if it is not there yet
(the writer thread), or dropped when there is no disk tier; anything dropped is recomputed
by whoever needs it. Reading from disk happens on the reader threads, ahead of need when the
:class:`~._prefetch.Predictor` or a structural rule says so; the decoder waits only for the
blocks still missing when it needs them, and that wait is timed and published (``kv.miss``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import ConfigurationError
from coreason_runtime.decode._blocks import (
    DEFAULT_BLOCK_TOKENS,
    BlockRef,
    KVSpace,
    block_tensors,
    chain_of,
    precision_id,
)
from coreason_runtime.decode._disk import DiskTier
from coreason_runtime.decode._kv import kv_length
from coreason_runtime.decode._moves import Entry, MovesMixin
from coreason_runtime.decode._prefetch import Background, DeviceCopies, Predictor
from coreason_runtime.decode._restore import RestoreMixin

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from coreason_runtime._coordinator import Coordinator

__all__ = ["BlockStore", "Held", "KVStats"]


@dataclass
class Held:
    """A paused session's KV, handed to the store as pinned blocks; ``release`` unpins."""

    refs: list[BlockRef]
    length: int
    release: Callable[[], Any] = field(repr=False)


@dataclass(frozen=True)
class KVStats:
    """Bytes and block groups per tier, block groups pinned by paused sessions, block reads
    since start: served from a fast tier (hits), from disk (misses), or lost; and the blocks
    the predictor prefetched: in RAM when read, still arriving when read, or never read."""

    tiers: dict[str, int]
    blocks: dict[str, int]
    pinned: int
    hits: int
    misses: int
    absent: int
    predicted_hits: int = 0
    predicted_late: int = 0
    predicted_wasted: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses + self.absent
        return self.hits / total if total else 0.0


class BlockStore(RestoreMixin, MovesMixin):
    """KV blocks of one model in tiers, with prefetch; shared by every session on that model.

    Parameters
    ----------
    space:
        Whose KV this is (:meth:`KVSpace.of`); None for a RAM-only store of anonymous caches.
    root:
        Folder of the disk tier (``$COREASON_HOME/kv`` for a runtime); None: no disk tier.
    ram_bytes, ram_tokens:
        Capacity of host RAM, in bytes and/or tokens (None: unbounded).
    gpu_bytes:
        Capacity on the model's CUDA device (None: unbounded; ignored without CUDA).
    disk_bytes:
        Capacity of the disk tier (None: unbounded).
    device:
        The model's device; blocks of a CUDA model live on it first, then in pinned RAM.
    bus:
        Where ``kv.*`` events go.
    write_through:
        Write every new block to disk in the background (a restart finds it); otherwise
        blocks reach disk only when they leave RAM.
    demote_on_pause:
        Sessions using this store hand their KV to it when they park.
    """

    def __init__(
        self,
        space: KVSpace | None = None,
        *,
        root: Path | None = None,
        ram_bytes: int | None = None,
        ram_tokens: int | None = None,
        gpu_bytes: int | None = 0,
        disk_bytes: int | None = None,
        device: Any = None,
        bus: EventBus | None = None,
        write_through: bool = True,
        demote_on_pause: bool = True,
        read_threads: int = 2,
        warm: bool = True,
    ) -> None:
        for name, cap in (("ram_bytes", ram_bytes), ("ram_tokens", ram_tokens)):
            if cap is not None and cap < 0:
                msg = f"{name} must be >= 0 or None, got {cap}"
                raise ConfigurationError(msg)
        if root is not None and space is None:
            msg = "a disk tier needs a KVSpace (which model's blocks the files hold)"
            raise ConfigurationError(msg)
        self.space = space
        self.block_tokens = space.block_tokens if space is not None else DEFAULT_BLOCK_TOKENS
        self.ram_bytes_cap, self.ram_tokens_cap = ram_bytes, ram_tokens
        self.disk_bytes_cap = disk_bytes
        self.bus = bus
        self.write_through = write_through
        self.demote_on_pause = demote_on_pause
        self._lock = threading.RLock()
        self._entries: dict[bytes, Entry] = {}
        self._children: dict[bytes, set[bytes]] = {}
        self._tick = 0
        self._ram = [0, 0]  # bytes, tokens
        self._leaving = [0, 0]  # of those, bytes and tokens already on their way out
        self._gpu = 0
        self.hits = self.misses = self.absent = 0
        self.foresight = [0, 0, 0]
        self._predicted: dict[bytes, int] = {}
        self._burst = [0, 0]  # blocks and bytes demoted by the writer since it was last idle
        self._disk_full_until = 0.0
        self._copies, self.gpu_bytes_cap = self._device_tier(device, gpu_bytes)
        self._pin = self._copies is not None
        self.disk = DiskTier(root, space) if root is not None and space is not None else None
        self.predictor = Predictor(
            self.disk.dir / "predictor.json" if self.disk is not None else None
        )
        self.background = Background(read_threads, self._writes_idle)
        if self.disk is not None:
            self.disk.scan()
            if warm:
                self.warm_up()

    @staticmethod
    def _device_tier(device: Any, gpu_bytes: int | None) -> tuple[DeviceCopies | None, int | None]:
        if device is None or str(device).split(":")[0] != "cuda":
            return None, 0
        import torch

        if not torch.cuda.is_available():
            return None, 0
        return DeviceCopies(torch.device(device)), gpu_bytes

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> BlockStore:
        """The runtime's store for its default model: disk tier in ``rt.config.kv_dir``
        (``$COREASON_KV_DIR``), else ``$COREASON_HOME/kv``."""
        from coreason_runtime.models import load_model

        cfg = rt.config
        loaded = load_model(cfg.model)
        # a per-operator precision map changes the keys and values: its formats name the space
        modules = loaded.precision.modules if loaded.precision is not None else {}
        space = KVSpace.of(
            loaded.model,
            loaded.tokenizer,
            name=loaded.name,
            revision=loaded.revision,
            block_tokens=cfg.kv_block_tokens,
            precision=precision_id(modules),
        )
        return cls(
            space,
            root=(cfg.kv_dir or rt.home / "kv") if cfg.kv_disk_bytes != 0 else None,
            ram_bytes=cfg.kv_ram_bytes,
            gpu_bytes=cfg.kv_gpu_bytes,
            disk_bytes=cfg.kv_disk_bytes,
            device=loaded.device,
            bus=rt.bus,
        )

    # --- bookkeeping -------------------------------------------------------------------------

    def tiers(self) -> dict[str, int]:
        """Bytes each tier holds now."""
        disk = self.disk.bytes if self.disk is not None else 0
        return {"gpu": self._gpu, "ram": self._ram[0], "disk": disk}

    @property
    def ram_tokens(self) -> int:
        """Tokens whose KV is in RAM (block groups, each counted once)."""
        return self._ram[1]

    def stats(self) -> KVStats:
        with self._lock:
            blocks = {
                "gpu": sum(e.gpu is not None for e in self._entries.values()),
                "ram": sum(e.ram is not None for e in self._entries.values()),
                "disk": len(self.disk) if self.disk is not None else 0,
            }
            pinned = sum(e.pins > 0 for e in self._entries.values())
            return KVStats(
                self.tiers(),
                blocks,
                pinned,
                self.hits,
                self.misses,
                self.absent,
                *self.foresight,
            )

    def _emit(self, type_: EventType, /, **data: Any) -> None:
        if self.bus is not None:
            self.bus.emit(type_, source="kv", tiers=self.tiers(), **data)

    def _touch(self, e: Entry) -> None:
        self._tick += 1
        e.last = self._tick

    def _set_ram(self, e: Entry, tensors: list[torch.Tensor] | None) -> None:
        """Under the lock: give ``e`` a RAM copy, or take it away; keeps the counters."""
        sign = (tensors is not None) - (e.ram is not None)
        self._ram[0] += sign * e.nbytes
        self._ram[1] += sign * len(e.ref.tokens)
        if e.leave_ram and tensors is None:
            self._leaving[0] -= e.nbytes
            self._leaving[1] -= len(e.ref.tokens)
            e.leave_ram = False
        e.ram = tensors

    def _set_gpu(self, e: Entry, tensors: list[torch.Tensor] | None) -> None:
        self._gpu += ((tensors is not None) - (e.gpu is not None)) * e.nbytes
        e.gpu = tensors

    def _add_entry(self, ref: BlockRef) -> Entry:
        e = self._entries.get(ref.digest)
        if e is None:
            e = self._entries[ref.digest] = Entry(ref)
            self._children.setdefault(ref.parent, set()).add(ref.digest)
        return e

    def _drop_entry(self, e: Entry) -> None:
        """Under the lock: forget ``e`` if nothing holds a copy, is moving it or pins it (a
        paused session's pin keeps its disk copy from being trimmed)."""
        if e.fast or e.writing or e.loading is not None or e.busy or e.pins:
            return
        if self._entries.get(e.ref.digest) is e:
            del self._entries[e.ref.digest]
            self._children.get(e.ref.parent, set()).discard(e.ref.digest)

    # --- putting KV in -----------------------------------------------------------------------

    def put(self, tokens: Sequence[int], cache: DynamicCache) -> list[BlockRef]:
        """Copy the KV of ``tokens`` (which ``cache`` holds from position 0) into blocks.

        Blocks already held are only touched. New ones go to the fastest tier (the device
        for a CUDA cache, else RAM) and, with write-through, to disk in the background.
        Returns the chain of blocks.
        """
        n = min(len(tokens), kv_length(cache))
        refs = chain_of(list(tokens[:n]), self.block_tokens)
        for ref in refs:
            self._put_block(ref, cache, copy=True)
        self.predictor.record([r.digest for r in refs])
        self._enforce()
        return refs

    def _put_block(self, ref: BlockRef, cache: DynamicCache, *, copy: bool) -> Entry | None:
        with self._lock:
            e = self._entries.get(ref.digest)
            loading = e.loading if e is not None else None
        if loading is not None:  # a read in flight may fail (a deleted file): let it land
            loading.result()
        with self._lock:
            e = self._entries.get(ref.digest)
            if e is not None and (e.fast or e.loading is not None):
                self._touch(e)
                return e
            on_disk = self.disk is not None and ref.digest in self.disk
            if on_disk and not copy:
                e = self._add_entry(ref)
                e.on_disk = True
                self._touch(e)
                return e
        tensors = block_tensors(cache, ref.start, ref.end)
        with self._lock:
            e = self._add_entry(ref)
            if e.fast:  # another thread put it meanwhile
                return e
            e.nbytes = sum(t.numel() * t.element_size() for t in tensors)
            e.on_disk = e.on_disk or on_disk
            if tensors[0].device.type == "cuda":
                self._set_gpu(e, tensors)
            else:
                self._set_ram(e, tensors)
            self._touch(e)
            write = self.write_through and not e.on_disk and self._disk_ok()
            if write:
                e.writing = True
        if write:
            self.background.submit_write(functools.partial(self._write, e))
        return e

    def hold(self, tokens: Sequence[int], cache: DynamicCache, owner: object) -> Held:
        """Take a parking session's KV: its blocks are pinned (kept until released, on
        disk if RAM is short) and go first when RAM is over capacity. The caller then
        frees its cache; :meth:`restore_held` gives the KV back. ``owner`` (the session)
        releases the pins if it is dropped without being resumed."""
        n = min(len(tokens), kv_length(cache))
        refs = chain_of(list(tokens[:n]), self.block_tokens)
        entries = [self._put_block(ref, cache, copy=False) for ref in refs]
        with self._lock:
            for e in entries:
                if e is not None:
                    e.pins += 1
        digests = [r.digest for r in refs]
        release = weakref.finalize(owner, self._unpin, digests)
        self._enforce()
        return Held(refs, n, release)

    def _unpin(self, digests: list[bytes]) -> None:
        with self._lock:
            for d in digests:
                e = self._entries.get(d)
                if e is not None and e.pins > 0:
                    e.pins -= 1
                    if not e.pins:
                        self._drop_entry(e)

    def clear(self) -> None:
        """Forget every block held in memory (files on disk stay)."""
        with self._lock:
            for e in list(self._entries.values()):
                if e.busy == 0 and e.loading is None and e.pins == 0:
                    self._set_ram(e, None)
                    self._set_gpu(e, None)
                    self._drop_entry(e)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait for the writes in flight (tests, benchmarks, shutdown)."""
        return self.background.flush(timeout)

    def close(self) -> None:
        """Finish the writes, stop the threads, save the predictor. Idempotent."""
        self.background.close()
        self.predictor.save()

    def __repr__(self) -> str:
        t = self.tiers()
        return (
            f"<BlockStore {self.space.model if self.space else 'anonymous'} "
            f"gpu={t['gpu']} ram={t['ram']} disk={t['disk']} bytes>"
        )
