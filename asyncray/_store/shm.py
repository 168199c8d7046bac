"""The node's object store: one immutable file per object in a shared-memory directory.

A writer fills a private temporary file and renames it into place, so a reader never sees
a partly written object (rename is atomic), and a writer that dies leaves only a ``.tmp``
file that the node sweeps. Readers ``mmap`` the file read-only and hand pickle protocol 5
out-of-band buffers that point into the mapping: numpy arrays come back zero-copy and
read-only.

Layout: ``MAGIC | u32 nbufs | u64 data_len | u64 buf_len * nbufs``, then the pickle bytes and
each buffer, every part aligned to 64 bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import shutil
import struct
from typing import Any

MAGIC = b"ARS1"
ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class ObjectStore:
    """Files under ``directory`` (shared memory) and ``spill_dir`` (disk), shared by the node's processes."""

    def __init__(self, directory: str, *, create: bool = False, node_id: bytes = b"", spill_dir: str = "") -> None:
        self.directory = directory
        self.spill_dir = spill_dir or directory + "-spill"
        self.node_id = node_id
        self.on_write: Any = None  # called with (object_id, size) after each write
        self.reserve: Any = None  # size -> {"segment": path} | {"disk": True} | {} (asks the node)
        if create:  # only the node creates (and later removes) the directories
            os.makedirs(directory, exist_ok=True)
            os.makedirs(self.spill_dir, exist_ok=True)

    def path(self, object_id: bytes) -> str:
        """Where an object lives in shared memory."""
        return os.path.join(self.directory, object_id.hex())

    def spill_path(self, object_id: bytes) -> str:
        """Where an object lives once spilled to disk."""
        return os.path.join(self.spill_dir, object_id.hex())

    def write(self, object_id: bytes, data: bytes, buffers: list[pickle.PickleBuffer]) -> int:
        """Store an object (after asking the node for room, when it can be asked); returns its size."""
        raws = [b.raw() for b in buffers]
        header = MAGIC + struct.pack("<IQ", len(raws), len(data)) + b"".join(
            struct.pack("<Q", r.nbytes) for r in raws
        )
        parts: list[Any] = []
        pos = 0
        for part in (header, data, *raws):
            pad = _align(pos) - pos
            if pad:
                parts.append(b"\0" * pad)
                pos += pad
            parts.append(part)
            pos += len(part) if isinstance(part, bytes) else part.nbytes
        where = self.reserve(pos) if self.reserve is not None else {}
        final = self.spill_path(object_id) if where.get("disk") else self.path(object_id)
        tmp = f"{final}.{os.getpid()}.tmp"
        if where.get("segment"):
            try:
                os.rename(where["segment"], tmp)  # a warm file: its pages are already there
                fd = os.open(tmp, os.O_WRONLY)
            except FileNotFoundError:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not where.get("segment"):
                os.ftruncate(fd, pos)
            off = 0
            for part in parts:
                view = memoryview(part)
                while view.nbytes:
                    n = os.pwrite(fd, view, off)
                    off += n
                    view = view[n:]
            # A warm segment may be larger than the object: the header says where the object
            # ends, and shrinking the file would cost as much as the write saved.
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp)
            if exc.errno == errno.ENOSPC:
                from asyncray.exceptions import OutOfMemoryError

                raise OutOfMemoryError(
                    f"no room for a {pos}-byte object: the object store ({self.directory}) and the spill "
                    f"directory ({self.spill_dir}) are both full"
                ) from exc
            raise
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        if self.on_write is not None:
            self.on_write(object_id, pos)
        return pos

    def read(self, object_id: bytes) -> tuple[memoryview, list[memoryview]]:
        """Map an object (from memory, or from disk if spilled); returns views into the mapping."""
        try:
            fd = os.open(self.path(object_id), os.O_RDONLY)
        except FileNotFoundError:
            try:
                fd = os.open(self.spill_path(object_id), os.O_RDONLY)
            except FileNotFoundError:
                from asyncray.exceptions import ObjectLostError

                raise ObjectLostError(f"object {object_id.hex()} is not in this node's store any more") from None
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        view = memoryview(mm)
        if view[:4] != MAGIC:
            raise ValueError(f"object {object_id.hex()} is corrupt (bad magic)")
        nbufs, data_len = struct.unpack_from("<IQ", view, 4)
        lens = struct.unpack_from(f"<{nbufs}Q", view, 16)
        pos = _align(16 + 8 * nbufs)
        data = view[pos : pos + data_len]
        pos += data_len
        bufs = []
        for n in lens:
            pos = _align(pos)
            bufs.append(view[pos : pos + n])
            pos += n
        return data, bufs

    def delete(self, object_id: bytes) -> None:
        """Remove an object wherever it is; readers that mapped it keep their mapping."""
        for path in (self.path(object_id), self.spill_path(object_id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def contains(self, object_id: bytes) -> bool:
        """True once the object is fully written (in memory or on disk)."""
        return os.path.exists(self.path(object_id)) or os.path.exists(self.spill_path(object_id))

    def destroy(self) -> None:
        """Remove both directories (node shutdown)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)
