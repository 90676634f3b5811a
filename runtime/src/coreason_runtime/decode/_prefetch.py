"""The block store's background work: what to prefetch, and the threads that move blocks.

* :class:`Predictor` — a light model of which block chains are read next: a recency and
  frequency score per chain (a recurring system prompt or few-shot block is read again and
  again; the last turn of a conversation is read by the next), persisted beside the blocks so
  a restarted kernel warms the likeliest chains from disk before the first request needs them;
  and a first-order (bigram) model over the stream of reads, learnt while the store runs:
  after the chain ending in block A was read, which chains were read next and how often, so
  the store prefetches the likeliest successor while the reader of A prefills and decodes.
  The structural rules (a resumed session needs all its blocks; a paused one's blocks go
  first) live in the store, which knows the sessions.
* :class:`Background` — the copy threads: a pool that reads blocks from disk (prefetch and
  demand loads, so a restore waits only for what is not in RAM yet) and one writer thread at
  the lowest CPU priority (write-through and demotion), so that disk writes take what the
  decoder leaves.
* :class:`DeviceCopies` — on CUDA, host-to-device copies on their own stream from pinned
  memory, so a prefetch overlaps the decoder's kernels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Background", "DeviceCopies", "Predictor"]

logger = logging.getLogger("coreason_runtime.decode.kv")

HALF_LIFE_S = 24 * 3600.0  # a chain read yesterday counts half as much as one read now


class Predictor:
    """Scores block chains by how often and how recently they were read.

    A chain is named by its last block's digest and remembered as the list of its digests;
    ``score = reads * 2 ** (-age / HALF_LIFE_S)``. :meth:`likely` gives the best chains
    first (what a restarted kernel prefetches); :meth:`save` writes them to ``path``
    atomically.
    """

    def __init__(
        self, path: Path | None = None, *, max_chains: int = 64, min_share: float = 0.3
    ) -> None:
        self.path = path
        self.max_chains = max_chains
        self.min_share = min_share
        self._chains: dict[str, dict[str, Any]] = {}
        self._next: dict[str, dict[str, float]] = {}  # chain read -> chains read after it
        self._last: str | None = None
        self._lock = threading.Lock()
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
            chains, following = saved["chains"], saved.get("next", {})
        except (OSError, ValueError, KeyError, TypeError):
            return  # a missing or damaged file only loses the warm-up hint
        if not isinstance(chains, dict) or not isinstance(following, dict):
            return
        for key, c in chains.items():
            if isinstance(c, dict) and isinstance(c.get("blocks"), list):
                self._chains[key] = c
        for key, row in following.items():
            if isinstance(row, dict) and all(isinstance(v, int | float) for v in row.values()):
                self._next[key] = {k: float(v) for k, v in row.items()}

    def record(self, digests: Sequence[bytes], *, weight: float = 1.0) -> None:
        """``digests`` (a chain, first block first) were just read, or will be."""
        if not digests:
            return
        key = digests[-1].hex()
        now = time.time()
        with self._lock:
            c = self._chains.get(key)
            if c is None:
                c = self._chains[key] = {"blocks": [d.hex() for d in digests], "reads": 0.0}
            c["reads"] = self._decayed(c, now) + weight
            c["at"] = now
            if len(self._chains) > self.max_chains:
                worst = min(self._chains, key=lambda k: self._decayed(self._chains[k], now))
                del self._chains[worst]

    def follow(self, digests: Sequence[bytes], *, fanout: int = 2) -> list[list[bytes]]:
        """``digests`` (a chain) were just read: count the transition from the previous read
        to this one, and return the chains likeliest to be read next (at most ``fanout``,
        each read after this chain at least ``min_share`` of the times, likeliest first)."""
        if not digests:
            return []
        key = digests[-1].hex()
        with self._lock:
            if self._last is not None:
                row = self._next.setdefault(self._last, {})
                row[key] = row.get(key, 0.0) + 1.0
                if len(self._next) > self.max_chains:  # forget the least-used rows
                    del self._next[min(self._next, key=lambda k: sum(self._next[k].values()))]
            self._last = key
            row = self._next.get(key, {})
            total = sum(row.values())
            ranked = sorted(row.items(), key=lambda kv: -kv[1])
            return [
                [bytes.fromhex(h) for h in self._chains[nxt]["blocks"]]
                for nxt, n in ranked[:fanout]
                if n >= self.min_share * total and nxt in self._chains
            ]

    @staticmethod
    def _decayed(c: dict[str, Any], now: float) -> float:
        age = max(0.0, now - float(c.get("at", now)))
        return float(c.get("reads", 0.0)) * math.pow(2.0, -age / HALF_LIFE_S)

    def likely(self) -> list[list[bytes]]:
        """Remembered chains, the likeliest to be read next first."""
        now = time.time()
        with self._lock:
            ranked = sorted(self._chains.values(), key=lambda c: -self._decayed(c, now))
            return [[bytes.fromhex(h) for h in c["blocks"]] for c in ranked]

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            text = json.dumps({"chains": self._chains, "next": self._next})
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError:
            logger.debug("could not save the KV predictor to %s", self.path, exc_info=True)
            with contextlib.suppress(OSError):
                tmp.unlink()


class Background:
    """The store's threads: ``read_threads`` disk readers and one low-priority writer.

    ``submit_read(fn)`` runs ``fn`` on a reader; ``submit_write(fn)`` queues ``fn`` for the
    writer; ``idle`` is called on the writer whenever its queue runs dry (the store
    publishes one event per burst of writes there). :meth:`flush` waits for the writes.
    """

    def __init__(self, read_threads: int, idle: Callable[[], None]) -> None:
        self._reads = ThreadPoolExecutor(
            max(1, read_threads), thread_name_prefix="coreason-kv-read"
        )
        self._writes: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._idle = idle
        self._pending = 0
        self._cv = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False

    def submit_read(self, fn: Callable[[], None]) -> None:
        self._reads.submit(fn)

    def submit_write(self, fn: Callable[[], None]) -> None:
        with self._cv:
            if self._closed:
                return
            self._pending += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="coreason-kv-write", daemon=True
                )
                self._writer.start()
        self._writes.put(fn)

    def _write_loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            fn = self._writes.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # one failed block never stops the writer
                logger.exception("a KV block write failed")
            with self._cv:
                self._pending -= 1
                last = self._pending == 0
            if last:
                try:
                    self._idle()
                finally:
                    with self._cv:
                        self._cv.notify_all()

    @property
    def pending_writes(self) -> int:
        return self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is done; False if ``timeout`` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self._cv:
            self._closed = True
        self._writes.put(None)
        self._reads.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            self._writer.join(timeout)


class DeviceCopies:
    """Copies between pinned host memory and a CUDA device on a dedicated stream.

    Written for CUDA and gated on ``torch.cuda.is_available()``; not exercised on CPU-only
    machines (the store then keeps blocks in RAM and on disk only).
    """

    def __init__(self, device: torch.device) -> None:
        import torch

        self.device = device
        self.stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]

    def to_device(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Start copying ``tensors`` to the device; the compute stream waits for them."""
        import torch

        with torch.cuda.stream(self.stream):
            out = [t.to(self.device, non_blocking=True) for t in tensors]
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return out

    def ready(self) -> None:
        """Make the calling thread's current stream (the decoder's, which may be a priority
        stream of its own) wait for every copy issued so far."""
        import torch

        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def to_host(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of device ``tensors`` in pinned host memory (waits for the copy)."""
        import torch

        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            out = []
            for t in tensors:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                out.append(host)
        self.stream.synchronize()
        return out
