"""The node's object store: one immutable file per object in a shared-memory directory.

A writer fills a private temporary file and renames it into place, so a reader never sees
a partly written object (rename is atomic), and a writer that dies leaves only a ``.tmp``
file that the node sweeps. Readers ``mmap`` the file read-only and hand pickle protocol 5
out-of-band buffers that point into the mapping: numpy arrays come back zero-copy and
read-only.

Recycling: a freed object's file becomes a warm segment for the next large write (its pages
are already allocated, so that write runs at memory speed) - but only when no process still
maps it, since zero-copy arrays of a freed object stay valid in Ray. Every reader holds a
shared ``flock`` on the file for as long as its mapping lives (the mapping keeps a duplicate
of the descriptor, and the lock belongs to that open file); the deleter recycles only when
an exclusive ``flock`` succeeds at once, and otherwise unlinks as before. A reader checks,
after locking, that the path still names the file it locked.

Layout: ``MAGIC | u32 nbufs | u64 data_len | u64 buf_len * nbufs``, then the pickle bytes and
each buffer, every part aligned to 64 bytes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import pickle
import shutil
import struct
import time
from typing import Any

from asyncray._store.writemaps import WriteMaps

MAGIC = b"ARS1"
ALIGN = 64
SEGMENT_PREFIX = "segment-"
# Objects at least this large are worth warm memory: freed ones become warm segments (when
# nobody maps them), and writing one makes the node keep segments of its size ready.
LARGE_OBJECT_BYTES = 8 * 1024 * 1024


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
        self._write_maps = WriteMaps()  # large files this process wrote, mapped for the next time
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
        part: Any
        for part in (header, data, *raws):
            pad = _align(pos) - pos
            if pad:
                parts.append(b"\0" * pad)
                pos += pad
            parts.append(part)
            pos += len(part) if isinstance(part, bytes) else part.nbytes
        where = self.reserve(pos) if self.reserve is not None else {}
        try:
            self._write_file(object_id, parts, pos, where)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            if not where.get("disk"):  # memory is fuller than the node measured: disk then
                try:
                    self._write_file(object_id, parts, pos, {"disk": True})
                except OSError as again:
                    if again.errno != errno.ENOSPC:
                        raise
                else:
                    return self._written(object_id, pos)
            from asyncray.exceptions import OutOfMemoryError

            raise OutOfMemoryError(
                f"no room for a {pos}-byte object: the object store ({self.directory}) and the spill "
                f"directory ({self.spill_dir}) are both full"
            ) from exc
        return self._written(object_id, pos)

    def _written(self, object_id: bytes, size: int) -> int:
        if self.on_write is not None:
            self.on_write(object_id, size)
        return size

    def _write_file(self, object_id: bytes, parts: list[Any], pos: int, where: dict[str, Any]) -> None:
        final = self.spill_path(object_id) if where.get("disk") else self.path(object_id)
        tmp = f"{final}.{os.getpid()}.tmp"
        warm = False
        if where.get("segment"):
            try:
                os.rename(where["segment"], tmp)  # a warm file: its pages are already there
                fd = os.open(tmp, os.O_RDWR)
                warm = True
            except FileNotFoundError:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # A warm segment may be larger than the object: the header says where the object
            # ends, and shrinking the file would cost as much as the write saved.
            if not warm:
                os.ftruncate(fd, pos)
            in_memory = not where.get("disk") and pos >= LARGE_OBJECT_BYTES
            if not (in_memory and self._write_maps.write(fd, parts, pos)):
                off = 0
                for part in parts:
                    view = memoryview(part)
                    while view.nbytes:
                        n = os.pwrite(fd, view, off)
                        off += n
                        view = view[n:]
                if in_memory:
                    self._write_maps.remember(fd)
            if warm:
                os.utime(fd)  # its use starts now, not when the segment was made (LRU spilling)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)

    def read(self, object_id: bytes) -> tuple[memoryview, list[memoryview]]:
        """Map an object (from memory, or from disk if spilled); returns views into the mapping."""
        fd = self.open_locked(object_id)
        if fd is None:
            from asyncray.exceptions import ObjectLostError

            raise ObjectLostError(f"object {object_id.hex()} is not in this node's store any more")
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # keeps a dup of fd, and with it the lock
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

    def open_locked(self, object_id: bytes) -> int | None:
        """Open an object read-only under a shared lock (so it is not recycled); None if it is gone."""
        for path in (self.path(object_id), self.spill_path(object_id)):
            fd = open_shared(path, touch=True)
            if fd is not None:
                return fd
        return None

    def delete(self, object_id: bytes) -> None:
        """Free an object wherever it is: recycle its memory if nobody maps it, else unlink it.

        Readers that mapped it keep their mapping, intact.
        """
        path = self.path(object_id)
        if not self._recycle(path, object_id):
            _unlink(path)
        _unlink(self.spill_path(object_id))

    def _recycle(self, path: str, object_id: bytes) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size < LARGE_OBJECT_BYTES or not lock_exclusive(fd):
                return False  # small, or someone still maps it: its pages must stay as they are
            os.rename(path, os.path.join(self.directory, f"{SEGMENT_PREFIX}freed-{object_id.hex()}"))
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def ids_with_prefix(self, prefix: bytes) -> list[bytes]:
        """Objects (in memory or on disk) whose ids start with ``prefix``: those of one owner."""
        start = prefix.hex()
        found = []
        for directory in (self.directory, self.spill_dir):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            found += [bytes.fromhex(n) for n in names if n.startswith(start) and "." not in n]
        return found

    def contains(self, object_id: bytes) -> bool:
        """True once the object is fully written (in memory or on disk)."""
        return os.path.exists(self.path(object_id)) or os.path.exists(self.spill_path(object_id))

    def close(self) -> None:
        """Let go of the mappings this process kept for writing (the files stay)."""
        self._write_maps.clear()

    def destroy(self) -> None:
        """Remove both directories (node shutdown)."""
        self._write_maps.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)


def lock_exclusive(fd: int) -> bool:
    """Take an exclusive lock if nobody reads the file (readers hold a shared one while mapped)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def object_length(fd: int) -> int:
    """Where the object in file ``fd`` ends (a warm segment's file may be longer): from its header."""
    head = os.pread(fd, 16, 0)
    if len(head) < 16 or head[:4] != MAGIC:
        return os.fstat(fd).st_size
    nbufs, data_len = struct.unpack_from("<IQ", head, 4)
    lens: tuple[int, ...] = struct.unpack(f"<{nbufs}Q", os.pread(fd, 8 * nbufs, 16)) if nbufs else ()
    pos: int = _align(16 + 8 * nbufs) + data_len
    for n in lens:
        pos = _align(pos) + n
    return pos


def open_shared(path: str, *, touch: bool = False) -> int | None:
    """Open ``path`` read-only and take a shared lock; None if it does not exist (any more).

    The check after locking catches a file that was recycled between open and lock.
    ``touch`` records the use in the file's access time (spilling picks the least recently
    used objects; mapped reads do not update it by themselves).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        st = os.fstat(fd)
        if os.stat(path).st_ino == st.st_ino:
            if touch:
                os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
            return fd
    except FileNotFoundError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
