"""Mappings of warm segments kept by a writer, so that writing the next object is a parallel memcpy.

``pwrite`` into a warm segment runs at 3.5-5 GB/s here, and a second thread does not help
(writes to one file are serialized in the kernel). A copy into a mapping whose page tables
are already filled runs at 8 GB/s on one thread and 10-13 GB/s on two (160 MB in 12-17 ms,
about what Ray's plasma store does with its always-mapped arena).

Freed objects come back as segments (``ObjectStore.delete``), usually to the same writer: a
loop of puts, or arguments passed by value. So after writing a large file (with ``pwrite``)
a writer maps it, page tables filled (MAP_POPULATE, 25-55 ms for 160 MB), on a helper thread
off the caller's path, and keeps the mapping; handed the same file (device and inode) again,
it copies into that mapping instead.

Copies go through NumPy, which releases the GIL, so a driver's event loop keeps running
during a large put; without NumPy loaded, writers use ``pwrite``. Mappings unused for
``IDLE_S``, or whose file is gone, are closed, so a writer never holds memory the store
has given back.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

MAX_FILES = 3
IDLE_S = 10.0
# Parts at least this large are copied by two threads.
SPLIT_BYTES = 4 * 1024 * 1024


class _Kept:
    __slots__ = ("fd", "mapped", "mm", "size", "used")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd  # our own duplicate: the file's identity stays checkable
        self.size = size
        self.mm: mmap.mmap | None = None
        self.mapped: Future[None] | None = None  # the helper thread filling the mapping
        self.used = time.monotonic()

    def populate(self) -> None:
        self.mm = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.mapped is not None and not self.mapped.done():
            self.mapped.add_done_callback(lambda _f: self.close())  # after the helper is done with it
            return
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass
        os.close(self.fd)
        self.fd = -1


class WriteMaps:
    """A writer's small cache of segment files it wrote, and their mappings."""

    def __init__(self) -> None:
        self._kept: dict[tuple[int, int], _Kept] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._helper: ThreadPoolExecutor | None = None

    def write(self, fd: int, parts: list[Any], size: int) -> bool:
        """Copy ``parts`` into file ``fd`` through a kept mapping; False: the caller must ``pwrite``
        (and then ``remember`` the file)."""
        np = sys.modules.get("numpy")
        if np is None:
            return False
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            kept = self._kept.pop(key, None)
        if kept is None or kept.size != st.st_size:
            if kept is not None:
                kept.close()
            return False
        ready = kept.mm is not None and kept.mapped is not None and kept.mapped.done()
        if ready and kept.mm is not None:
            try:
                self._copy(np, kept.mm, parts, size)
            except BaseException:
                kept.close()
                raise
        kept.used = time.monotonic()
        with self._lock:
            self._kept[key] = kept
        return ready  # not mapped yet (or mapping failed): pwrite this time

    def _copy(self, np: Any, mm: mmap.mmap, parts: list[Any], size: int) -> None:
        dest = np.frombuffer(mm, dtype=np.uint8, count=size)
        try:
            off = 0
            for part in parts:
                src = np.frombuffer(part, dtype=np.uint8)
                n = src.size
                if n >= SPLIT_BYTES:
                    half = n // 2
                    other = self._pool().submit(np.copyto, dest[off + half : off + n], src[half:])
                    dest[off : off + half] = src[:half]  # NumPy drops the GIL while copying
                    other.result()
                else:
                    dest[off : off + n] = src
                off += n
        finally:
            del dest

    def _pool(self) -> ThreadPoolExecutor:
        if self._helper is None:
            self._helper = ThreadPoolExecutor(2, thread_name_prefix="asyncray-copy")
        return self._helper

    def remember(self, fd: int) -> None:
        """After a ``pwrite`` of file ``fd``: map it in the background for the next write into it."""
        if sys.modules.get("numpy") is None:
            return
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            if key in self._kept:
                return  # still being mapped
        kept = _Kept(os.dup(fd), st.st_size)
        kept.mapped = self._pool().submit(kept.populate)
        with self._lock:
            self._kept[key] = kept
            self._drop_stale()
            while len(self._kept) > MAX_FILES:
                self._kept.pop(next(iter(self._kept))).close()
            if self._timer is None:
                self._timer = threading.Timer(IDLE_S / 2, self._expire)
                self._timer.daemon = True
                self._timer.start()

    def _drop_stale(self, idle_s: float | None = None) -> None:
        """Close what is unused for ``idle_s`` or whose file was removed (holding the lock)."""
        now = time.monotonic()
        for key, kept in list(self._kept.items()):
            try:
                gone = os.fstat(kept.fd).st_nlink == 0
            except OSError:
                gone = True
            if gone or (idle_s is not None and now - kept.used >= idle_s):
                del self._kept[key]
                kept.close()

    def _expire(self) -> None:
        with self._lock:
            self._timer = None
            self._drop_stale(IDLE_S)
            if self._kept:
                self._timer = threading.Timer(IDLE_S / 2, self._expire)
                self._timer.daemon = True
                self._timer.start()

    def clear(self) -> None:
        """Close every mapping and the helper thread (the store is going away)."""
        with self._lock:
            kept, self._kept = self._kept, {}
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            helper, self._helper = self._helper, None
        for k in kept.values():
            k.close()
        if helper is not None:
            helper.shutdown(wait=False)
