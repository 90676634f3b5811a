"""Getting KV back out of the block store: prefix matches, restores, prefetch and warm-up.

The read side of :class:`~coreason_runtime.decode._store.BlockStore`, kept apart from the
write side (puts, capacity, the disk writer). A restore plans the blocks it needs, starts
disk reads for those not in a fast tier (or joins reads a prefetch already started), then
copies the blocks into the cache in order, waiting on a block only when it is reached; the
time spent waiting is the miss time, published with the hit counts.

After each prefix read the predictor's bigram model names the chains likeliest to be read
next, and their blocks still on disk are prefetched into the RAM left free (never evicting
anything for a guess) while the reader prefills and decodes. The next read settles those
guesses (``kv.predicted``): blocks found in RAM are hits, blocks still arriving are late (the
wait is metered), blocks not read are wasted and leave RAM first.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventType
from coreason_runtime.decode._blocks import ROOT, BlockRef, block_digest, chain_of, fill_cache

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from coreason_runtime.decode._disk import DiskTier
    from coreason_runtime.decode._moves import Entry
    from coreason_runtime.decode._prefetch import DeviceCopies, Predictor
    from coreason_runtime.decode._store import Held

__all__ = ["RestoreMixin"]

Plan = list[tuple[BlockRef, int]]  # blocks in order, and how many of each one's tokens to use


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RestoreMixin:
    """The read side of the block store (fields are the store's)."""

    block_tokens: int
    disk: DiskTier | None
    predictor: Predictor
    ram_bytes_cap: int | None
    ram_tokens_cap: int | None
    hits: int
    misses: int
    absent: int
    foresight: list[int]  # predicted blocks: hits, late, wasted
    _predicted: dict[bytes, int]  # predicted blocks being or already prefetched -> bytes
    _ram: list[int]
    _leaving: list[int]
    _lock: threading.RLock
    _entries: dict[bytes, Entry]
    _children: dict[bytes, set[bytes]]
    _copies: DeviceCopies | None

    if TYPE_CHECKING:

        def _emit(self, type_: EventType, /, **data: Any) -> None: ...

        def _touch(self, e: Entry) -> None: ...

        def _set_gpu(self, e: Entry, tensors: list[torch.Tensor] | None) -> None: ...

        def _start_read(self, ref: BlockRef) -> tuple[Future[bool] | None, bool]: ...

        def _enforce(self) -> None: ...

    # --- matching ----------------------------------------------------------------------------

    def match(self, tokens: Sequence[int], limit: int | None = None) -> Plan:
        """The blocks holding the longest prefix of ``tokens[:limit]`` that any tier has.

        Whole blocks are matched by digest; the last one may be any held block that follows
        the matched prefix and shares only its first few tokens with ``tokens`` (the KV of a
        position depends only on the tokens up to it, so that part of it is exact).
        """
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        plan: Plan = []
        parent, pos = ROOT, 0
        for ref in chain_of(tokens, self.block_tokens, partial=False):
            if ref.end > limit or not self._known(ref):
                break
            plan.append((ref, len(ref.tokens)))
            parent, pos = ref.digest, ref.end
        rest = tuple(int(t) for t in tokens[pos:limit])
        if rest and len(rest) < self.block_tokens:  # a partial block, maybe another process's
            exact = BlockRef(block_digest(parent, rest), parent, pos, rest)
            if self._known(exact):
                plan.append((exact, len(rest)))
                return plan
        if rest:
            child, n = self._best_child(parent, rest)
            if child is not None:
                plan.append((child, n))
        return plan

    def _known(self, ref: BlockRef) -> bool:
        with self._lock:
            e = self._entries.get(ref.digest)
            if e is not None and (e.fast or e.loading is not None or e.on_disk):
                return True
        return self.disk is not None and self.disk.present(ref)

    def _best_child(self, parent: bytes, rest: Sequence[int]) -> tuple[BlockRef | None, int]:
        with self._lock:
            refs = [self._entries[d].ref for d in self._children.get(parent, ())]
        if self.disk is not None:
            refs += [b.ref for b in self.disk.children(parent)]
        best: BlockRef | None = None
        best_n = 0
        for ref in refs:
            n = _common(ref.tokens, rest)
            if n > best_n:
                best, best_n = ref, n
        return best, best_n

    # --- restoring ---------------------------------------------------------------------------

    def lookup(
        self,
        tokens: Sequence[int],
        cache: DynamicCache,
        *,
        limit: int | None = None,
        session: str | None = None,
    ) -> int:
        """Fill the empty ``cache`` with the longest held prefix of ``tokens[:limit]``;
        returns its length (0: nothing reused)."""
        plan = self.match(tokens, limit)
        if not plan:
            return 0
        with self._lock:
            for ref, _ in plan:
                e = self._entries.get(ref.digest)
                if e is not None:
                    e.reads += 1
        got = self._restore(plan, cache, reason="prefix", session=session, wanted=None)
        digests = [ref.digest for ref, _ in plan]
        self.predictor.record(digests)
        self._foresee(self.predictor.follow(digests))
        return got

    def restore_held(self, held: Held, cache: DynamicCache, *, session: str | None = None) -> int:
        """Give a paused session's KV back into its (empty) ``cache`` and unpin it; returns
        how many tokens came back (fewer than ``held.length`` if blocks were lost: the
        caller recomputes the rest)."""
        plan = [(ref, len(ref.tokens)) for ref in held.refs]
        try:
            return self._restore(plan, cache, reason="resume", session=session, wanted=held.length)
        finally:
            held.release()

    def _restore(
        self,
        plan: Plan,
        cache: DynamicCache,
        *,
        reason: str,
        session: str | None,
        wanted: int | None,
    ) -> int:
        taken, started = self._take(plan)
        with self._lock:
            foreseen = {e.ref.digest for e, _, _ in taken} & self._predicted.keys()
        got, waited, miss_bytes, late_wait = 0, 0.0, 0, 0.0
        counts = [0, 0]  # blocks used that were in a fast tier, and that came from disk
        parts: list[list[torch.Tensor]] = []
        try:
            for e, use, fut in taken:
                if fut is not None:
                    t0 = time.perf_counter()
                    ok = fut.result()
                    dt = time.perf_counter() - t0
                    waited += dt
                    late_wait += dt if e.ref.digest in foreseen else 0.0
                    miss_bytes += e.nbytes
                    if not ok:
                        break
                tensors = self._fast(e)
                if tensors is None:
                    break
                if not parts:
                    parts = [[] for _ in tensors]
                for layer, t in zip(parts, tensors, strict=True):
                    layer.append(t)
                got = e.ref.start + use
                counts[fut is not None] += 1
            if got:
                if self._copies is not None:  # device copies made on other threads' streams
                    self._copies.ready()
                fill_cache(cache, parts, got)
        finally:
            with self._lock:
                for e, _, _ in taken:
                    e.busy -= 1
                    self._touch(e)
            self._enforce()  # blocks read for this restore were kept while it copied them
        absent = len(plan) - counts[0] - counts[1]
        recomputed = max(0, wanted - got) if wanted is not None else 0
        with self._lock:
            self.hits += counts[0]
            self.misses += counts[1]
            self.absent += absent
        self._emit(
            EventType.KV_READ,
            session=session,
            reason=reason,
            tokens=got,
            blocks=len(plan),
            hits=counts[0],
            misses=counts[1],
            absent=absent,
            wait_ms=1000 * waited,
        )
        if counts[1] or absent:
            self._emit(
                EventType.KV_MISS,
                session=session,
                reason=reason,
                blocks=counts[1] + absent,
                bytes=miss_bytes,
                wait_ms=1000 * waited,
                recomputed=recomputed,
            )
        if started:
            self._promoted(started, miss_bytes, "demand")
        if reason == "prefix":
            self._settle(taken, late_wait, session)
        return got

    # --- predictions -------------------------------------------------------------------------

    def _settle(
        self,
        taken: list[tuple[Entry, int, Future[bool] | None]],
        late_wait: float,
        session: str | None,
    ) -> None:
        """Score the blocks the last prediction prefetched against this read's blocks."""
        hits = late = 0
        with self._lock:
            outstanding, self._predicted = self._predicted, {}
            for e, _, fut in taken:
                if outstanding.pop(e.ref.digest, None) is not None:
                    hits += fut is None
                    late += fut is not None
            wasted = len(outstanding)
            self.foresight[0] += hits
            self.foresight[1] += late
            self.foresight[2] += wasted
        if hits or late or wasted:
            self._emit(
                EventType.KV_PREDICTED,
                session=session,
                hits=hits,
                late=late,
                wasted=wasted,
                bytes=sum(outstanding.values()),
                wait_ms=1000 * late_wait,
            )

    def _room(self) -> tuple[float, float]:
        """Bytes and tokens RAM can take before it is over capacity (inf: no capacity)."""
        with self._lock:
            b, t = self._ram[0] - self._leaving[0], self._ram[1] - self._leaving[1]
        room_b = math.inf if self.ram_bytes_cap is None else self.ram_bytes_cap - b
        room_t = math.inf if self.ram_tokens_cap is None else self.ram_tokens_cap - t
        return room_b, room_t

    def _foresee(self, chains: Sequence[Sequence[bytes]]) -> int:
        """Prefetch, into free RAM only, the blocks of ``chains`` that are only on disk;
        returns the reads started. The blocks stay marked as guesses until read."""
        if self.disk is None or not chains:
            return 0
        room_b, room_t = self._room()
        refs: list[BlockRef] = []
        sizes: dict[bytes, int] = {}
        for chain in chains:
            for digest in chain:
                with self._lock:
                    e = self._entries.get(digest)
                    if digest in sizes or (e is not None and (e.fast or e.loading is not None)):
                        continue
                block = self.disk.get(digest)
                if block is None:
                    break
                room_b -= block.nbytes
                room_t -= len(block.ref.tokens)
                if room_b < 0 or room_t < 0:
                    break
                refs.append(block.ref)
                sizes[digest] = block.nbytes
        with self._lock:  # held until marked: a read cannot land unmarked
            started = self.prefetch(refs, reason="predicted")
            for ref in refs:
                e = self._entries.get(ref.digest)
                if e is not None and e.loading is not None:
                    e.speculative = True
                    self._predicted[ref.digest] = sizes[ref.digest]
        return started

    def _take(self, plan: Plan) -> tuple[list[tuple[Entry, int, Future[bool] | None]], int]:
        """Mark the planned blocks busy (so nothing evicts them mid-copy) and start the
        reads they need; stops at the first block no tier has."""
        taken: list[tuple[Entry, int, Future[bool] | None]] = []
        started = 0
        with self._lock:
            for ref, use in plan:
                e = self._entries.get(ref.digest)
                fut: Future[bool] | None = None
                if e is None or not e.fast:
                    fut, new = self._start_read(ref)
                    if fut is None:
                        break
                    started += new
                    e = self._entries[ref.digest]
                e.busy += 1
                e.speculative = False
                taken.append((e, use, fut))
        return taken, started

    def _fast(self, e: Entry) -> list[torch.Tensor] | None:
        """The copy of ``e`` to build a cache from: on the device for a CUDA model."""
        if self._copies is None:
            return e.ram
        if e.gpu is None and e.ram is not None:
            gpu = self._copies.to_device(e.ram)
            with self._lock:
                if e.gpu is None:
                    self._set_gpu(e, gpu)
        return e.gpu

    def _promoted(self, blocks: int, nbytes: int, reason: str) -> None:
        self._emit(
            EventType.KV_PROMOTED,
            blocks=blocks,
            bytes=nbytes,
            src="disk",
            dst="gpu" if self._copies is not None else "ram",
            reason=reason,
        )

    # --- ahead of need -----------------------------------------------------------------------

    def prefetch(self, refs: Sequence[BlockRef], *, reason: str = "prefetch") -> int:
        """Start bringing ``refs`` from disk into RAM (and onto the device) on the reader
        threads; returns how many reads were started. One ``kv.promoted`` event is published
        when they are all done."""
        futures: list[tuple[Future[bool], BlockRef]] = []
        with self._lock:
            for ref in refs:
                fut, new = self._start_read(ref)
                if fut is not None and new:
                    futures.append((fut, ref))
        if not futures:
            return 0
        left = [len(futures), 0, 0]  # reads pending, blocks and bytes promoted
        lock = threading.Lock()

        def done(fut: Future[bool], ref: BlockRef) -> None:
            with self._lock:
                e = self._entries.get(ref.digest)
                nbytes = e.nbytes if e is not None else 0
            with lock:
                left[0] -= 1
                if fut.result():
                    left[1] += 1
                    left[2] += nbytes
                last = left[0] == 0
            if last and left[1]:
                self._promoted(left[1], left[2], reason)

        for fut, ref in futures:
            fut.add_done_callback(functools.partial(done, ref=ref))
        return len(futures)

    def warm_up(self) -> int:
        """Prefetch the chains the predictor rates likeliest, from disk, into up to half of
        the RAM capacity (a restarted kernel's first request then finds them in RAM)."""
        if self.disk is None:
            return 0
        budget_bytes = self.ram_bytes_cap // 2 if self.ram_bytes_cap is not None else None
        budget_tokens = self.ram_tokens_cap // 2 if self.ram_tokens_cap is not None else None
        refs: list[BlockRef] = []
        seen: set[bytes] = set()
        used_b = used_t = 0
        for chain in self.predictor.likely():
            for digest in chain:
                block = self.disk.get(digest)
                if block is None:
                    break
                if digest in seen:
                    continue
                used_b += block.nbytes
                used_t += len(block.ref.tokens)
                if (budget_bytes is not None and used_b > budget_bytes) or (
                    budget_tokens is not None and used_t > budget_tokens
                ):
                    return self.prefetch(refs, reason="warmup")
                seen.add(digest)
                refs.append(block.ref)
        return self.prefetch(refs, reason="warmup")
