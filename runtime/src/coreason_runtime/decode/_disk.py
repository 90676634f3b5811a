"""The disk tier of the KV block store: one checksummed file per block and layer.

Files live under ``<root>/<space id>/<2 hex>/<digest>.<layer>.kvb``. Each starts with a fixed
prelude (magic, version, header length and the header's CRC-32), then a JSON header naming
the space, layer, digest, parent, tokens, dtype, shape and the payload's CRC-32, then the raw
keys and values. A file is written under a temporary name and renamed into place, so a
reader (this process or another) sees a whole file or none; a crash mid-write leaves only a
``.tmp`` file, which no reader opens and the next scan removes. Nothing is fsynced: a file
torn by a power loss fails its checksum. Every check that fails raises :class:`BlockFault`
with its reason, and the caller drops the copy and recomputes: a bad file is never used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreason_runtime.decode._blocks import BlockRef, KVSpace

if TYPE_CHECKING:
    import torch

__all__ = ["BlockFault", "DiskBlock", "DiskFull", "DiskTier"]

MAGIC = b"CKVB"
VERSION = 1
PRELUDE = struct.Struct("<4sHHII")  # magic, version, reserved, header length, header CRC-32
SUFFIX = ".kvb"
STALE_TMP_S = 3600.0  # a .tmp file this old belongs to a writer that died
DTYPES = ("float32", "float16", "bfloat16", "float64")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class BlockFault(Exception):
    """A block file failed a check (``reason``: missing, truncated, header, namespace,
    mismatch, checksum); internal, never reaches a user."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DiskFull(OSError):
    """The file system refused a block for lack of space (or quota)."""


@dataclass
class DiskBlock:
    """A block known to be on disk: its chain position, tokens and size over all layers."""

    ref: BlockRef
    nbytes: int


class DiskTier:
    """Block files of one :class:`KVSpace` under ``root``, with an index of whole blocks.

    The index (digest -> :class:`DiskBlock`, in least-recently-used order) is built by
    :meth:`scan` from the files' headers and kept as this process writes, reads and removes;
    files another process writes are found by :meth:`present` (a ``stat``), and files that
    vanish (another process's eviction, a deleted folder) are found when a read fails.
    """

    def __init__(self, root: Path, space: KVSpace) -> None:
        self.space = space
        self.dir = Path(root) / space.id
        self._index: OrderedDict[bytes, DiskBlock] = OrderedDict()
        self._children: dict[bytes, set[bytes]] = {}
        self._lock = threading.Lock()
        self.bytes = 0

    # --- paths and the index -----------------------------------------------------------------

    def path(self, digest: bytes, layer: int) -> Path:
        h = digest.hex()
        return self.dir / h[:2] / f"{h}.{layer:03d}{SUFFIX}"

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, digest: bytes) -> DiskBlock | None:
        with self._lock:
            return self._index.get(digest)

    def children(self, parent: bytes) -> list[DiskBlock]:
        """Indexed blocks that follow ``parent`` (for a match inside a block)."""
        with self._lock:
            return [self._index[d] for d in self._children.get(parent, ()) if d in self._index]

    def present(self, ref: BlockRef) -> bool:
        """Whether every layer file of ``ref`` exists (written by any process); indexes it."""
        if ref.digest in self:
            return True
        sizes = []
        for layer in range(self.space.layers):
            try:
                sizes.append(self.path(ref.digest, layer).stat().st_size)
            except OSError:
                return False
        self._add(ref, sum(sizes))
        return True

    def lru(self) -> list[DiskBlock]:
        """Indexed blocks, least recently used first."""
        with self._lock:
            return list(self._index.values())

    def touch(self, digest: bytes) -> None:
        with self._lock:
            if digest in self._index:
                self._index.move_to_end(digest)

    def _add(self, ref: BlockRef, nbytes: int) -> None:
        with self._lock:
            old = self._index.pop(ref.digest, None)
            self.bytes += nbytes - (old.nbytes if old else 0)
            self._index[ref.digest] = DiskBlock(ref, nbytes)
            self._children.setdefault(ref.parent, set()).add(ref.digest)

    def forget(self, digest: bytes) -> DiskBlock | None:
        """Drop ``digest`` from the index (not its files)."""
        with self._lock:
            old = self._index.pop(digest, None)
            if old is not None:
                self.bytes -= old.nbytes
                self._children.get(old.ref.parent, set()).discard(digest)
            return old

    def remove(self, digest: bytes) -> int:
        """Delete every layer file of ``digest``; the bytes the index held for it."""
        old = self.forget(digest)
        for layer in range(self.space.layers):
            with contextlib.suppress(OSError):
                self.path(digest, layer).unlink()
        return old.nbytes if old else 0

    # --- writing -----------------------------------------------------------------------------

    def write(self, ref: BlockRef, layers: list[torch.Tensor]) -> int:
        """Write every layer of ``ref`` (atomically, file by file); the bytes written.

        Raises :class:`DiskFull` when the file system is out of space, ``OSError`` on other
        failures; the files already written for this block are then removed.
        """
        total = 0
        try:
            for layer, tensor in enumerate(layers):
                total += self._write_one(ref, layer, tensor)
        except OSError:
            self.remove(ref.digest)
            raise
        self._add(ref, total)
        return total

    def _write_one(self, ref: BlockRef, layer: int, tensor: torch.Tensor) -> int:
        t = tensor.detach().to("cpu").contiguous()
        payload: Any = t.reshape(-1).view(_u8()).numpy()
        meta = {
            "space": self.space.id,
            "layer": layer,
            "digest": ref.hex,
            "parent": ref.parent.hex(),
            "start": ref.start,
            "tokens": list(ref.tokens),
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "nbytes": int(payload.nbytes),
            "crc": zlib.crc32(payload),
        }
        header = json.dumps(meta, separators=(",", ":")).encode()
        prelude = PRELUDE.pack(MAGIC, VERSION, 0, len(header), zlib.crc32(header))
        path = self.path(ref.digest, layer)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            try:
                f = open(tmp, "wb")  # noqa: SIM115 - closed below; reopened after a mkdir
            except FileNotFoundError:  # first block of a prefix, or the folder was deleted
                tmp.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")  # noqa: SIM115
            with f:
                f.write(prelude)
                f.write(header)
                f.write(memoryview(payload))
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if e.errno in _FULL:
                raise DiskFull(e.errno, f"no space for {path.name}: {e.strerror}") from e
            raise
        return PRELUDE.size + len(header) + int(payload.nbytes)

    # --- reading -----------------------------------------------------------------------------

    def read(self, ref: BlockRef, layer: int, *, pin: bool = False) -> torch.Tensor:
        """Layer ``layer`` of block ``ref``, every check passed; raises :class:`BlockFault`."""
        path = self.path(ref.digest, layer)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as e:
            raise BlockFault("missing", f"{path.name}: {e.strerror}") from e
        with f:
            meta = self._header(f, path.name)
            self._check(meta, ref, layer, path.name)
            tensor = _empty(meta, pin)
            buf: Any = tensor.reshape(-1).view(_u8()).numpy()
            n = f.readinto(memoryview(buf))
            if n != meta["nbytes"] or f.read(1):
                msg = f"{path.name}: payload of {n} bytes, header says {meta['nbytes']}"
                raise BlockFault("truncated", msg)
            if zlib.crc32(buf) != meta["crc"]:
                raise BlockFault("checksum", f"{path.name}: payload CRC-32 differs")
        return tensor

    def _header(self, f: Any, name: str) -> dict[str, Any]:
        pre = f.read(PRELUDE.size)
        if len(pre) < PRELUDE.size:
            raise BlockFault("truncated", f"{name}: {len(pre)} bytes, shorter than a prelude")
        magic, version, _, hlen, hcrc = PRELUDE.unpack(pre)
        if magic != MAGIC or version != VERSION:
            raise BlockFault("header", f"{name}: not a version {VERSION} block file")
        header = f.read(hlen)
        if len(header) < hlen:
            raise BlockFault("truncated", f"{name}: header cut at {len(header)} of {hlen} bytes")
        if zlib.crc32(header) != hcrc:
            raise BlockFault("header", f"{name}: header CRC-32 differs")
        try:
            meta: dict[str, Any] = json.loads(header)
        except ValueError as e:
            raise BlockFault("header", f"{name}: header is not JSON") from e
        return meta

    def _check(self, meta: dict[str, Any], ref: BlockRef, layer: int, name: str) -> None:
        if meta.get("space") != self.space.id:
            msg = f"{name}: written for KV space {meta.get('space')}, not {self.space.id}"
            raise BlockFault("namespace", msg)
        expected = {
            "layer": layer,
            "digest": ref.hex,
            "parent": ref.parent.hex(),
            "start": ref.start,
            "tokens": list(ref.tokens),
        }
        wrong = sorted(k for k, v in expected.items() if meta.get(k) != v)
        shape = meta.get("shape")
        sp = self.space
        want_shape = [2, sp.kv_heads, len(ref.tokens), sp.head_dim]
        if shape != want_shape or meta.get("dtype") not in DTYPES:
            wrong.append("shape/dtype")
        if wrong:
            raise BlockFault("mismatch", f"{name}: {', '.join(wrong)} differ from the address")

    # --- scanning ----------------------------------------------------------------------------

    def scan(self) -> int:
        """Index the whole blocks on disk (oldest first) and remove stale temporary files;
        returns how many blocks were indexed."""
        if not self.dir.is_dir():
            return 0
        found: dict[str, list[Path]] = {}
        now = time.time()
        for sub in self.dir.iterdir():
            if not sub.is_dir():
                continue
            for p in sub.iterdir():
                if p.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if now - p.stat().st_mtime > STALE_TMP_S:
                            p.unlink()
                elif p.name.endswith(SUFFIX):
                    found.setdefault(p.name.split(".", 1)[0], []).append(p)
        blocks = []
        for files in found.values():
            if len(files) != self.space.layers:
                continue  # being written by another process, or partly evicted
            entry = self._scan_block(files)
            if entry is not None:
                blocks.append(entry)
        for _, ref, size in sorted(blocks, key=lambda b: b[0]):
            self._add(ref, size)
        return len(blocks)

    def _scan_block(self, files: list[Path]) -> tuple[float, BlockRef, int] | None:
        try:
            first = min(files, key=lambda p: p.name)
            with open(first, "rb") as f:
                meta = self._header(f, first.name)
            stats = [p.stat() for p in files]
            ref = BlockRef(
                bytes.fromhex(meta["digest"]),
                bytes.fromhex(meta["parent"]),
                int(meta["start"]),
                tuple(int(t) for t in meta["tokens"]),
            )
        except (OSError, BlockFault, KeyError, ValueError, TypeError):
            return None  # checked for real (and dropped) when a read needs it
        if meta.get("space") != self.space.id:
            return None
        return max(s.st_mtime for s in stats), ref, sum(s.st_size for s in stats)


def _u8() -> Any:
    import torch

    return torch.uint8


def _empty(meta: dict[str, Any], pin: bool) -> torch.Tensor:
    import torch

    dtype = getattr(torch, str(meta["dtype"]))
    return torch.empty([int(d) for d in meta["shape"]], dtype=dtype, pin_memory=pin)
