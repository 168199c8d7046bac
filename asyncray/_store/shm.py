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
    """Files under ``directory``; every process on the node opens the same directory."""

    def __init__(self, directory: str, *, create: bool = False, node_id: bytes = b"") -> None:
        self.directory = directory
        self.node_id = node_id
        self.on_write: Any = None  # called with (object_id, size) after each write
        if create:  # only the node creates (and later removes) the directory
            os.makedirs(directory, exist_ok=True)

    def path(self, object_id: bytes) -> str:
        """Where an object lives."""
        return os.path.join(self.directory, object_id.hex())

    def write(self, object_id: bytes, data: bytes, buffers: list[pickle.PickleBuffer]) -> int:
        """Store an object; returns its size on disk."""
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
        final = self.path(object_id)
        tmp = f"{final}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, pos)
            off = 0
            for part in parts:
                view = memoryview(part)
                while view.nbytes:
                    n = os.pwrite(fd, view, off)
                    off += n
                    view = view[n:]
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
        """Map an object; returns the pickle bytes and buffers, all views into the mapping."""
        fd = os.open(self.path(object_id), os.O_RDONLY)
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
        """Remove an object; readers that mapped it keep their mapping."""
        try:
            os.unlink(self.path(object_id))
        except FileNotFoundError:
            pass

    def contains(self, object_id: bytes) -> bool:
        """True once the object is fully written."""
        return os.path.exists(self.path(object_id))

    def destroy(self) -> None:
        """Remove the whole directory (node shutdown)."""
        shutil.rmtree(self.directory, ignore_errors=True)
