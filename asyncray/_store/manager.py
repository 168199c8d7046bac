"""The node's side of its object store: capacity, spilling to disk, warm segments.

Writers (drivers and workers on this node) ask ``reserve(size)`` before writing an object.
The manager answers where to write:

* into a *warm segment*: a file in the store whose pages are already allocated, so the
  write runs at memory speed instead of paying a page fault per 4 KiB (PERF-NOTES: a fresh
  /dev/shm file writes at ~1 GB/s, warm memory at ~7 GB/s);
* into a fresh file, when no segment fits;
* straight to the spill directory on disk, when the object is larger than the store.

Usage is measured from the directory itself (what is there is the truth, even after a
writer crashed), and when an object would cross the high-water mark the oldest objects
move to disk until usage is under the low-water mark, so writers are not stalled at the
edge. Readers look in the store, then on disk (``ObjectStore.read``): a spilled object
comes back transparently, and one being moved is in one place or the other.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from asyncray._procs import pid_alive
from asyncray._store.shm import SEGMENT_PREFIX, ObjectStore, lock_exclusive, open_shared

log = logging.getLogger(__name__)

HIGH_WATER = 0.8
LOW_WATER = 0.6
# Stale temporary files of writers that died are removed after this long.
STALE_TMP_S = 30.0


@dataclass
class Usage:
    """What the store holds right now."""

    used: int
    objects: int
    segments: int
    spilled: int
    spilled_objects: int
    limit: int

    def as_dict(self) -> dict[str, int]:
        """For node info, the CLI and the dashboard."""
        return {
            "used_bytes": self.used, "objects": self.objects, "segment_bytes": self.segments,
            "spilled_bytes": self.spilled, "spilled_objects": self.spilled_objects,
            "free_bytes": max(0, self.limit - self.used - self.segments), "limit_bytes": self.limit,
        }


class StoreManager:
    """Capacity, spilling and warm segments for one node's store (blocking: run it off the loop)."""

    def __init__(self, store: ObjectStore, limit_bytes: int, *, segment_bytes: int = 0, segment_count: int = 0) -> None:
        self.store = store
        self.limit = limit_bytes
        self.segment_bytes = segment_bytes
        self.segment_count = segment_count
        self._segment_seq = 0

    # ------------------------------------------------------------ measuring
    def usage(self) -> Usage:
        """Scan the store and spill directories."""
        used = objects = segments = 0
        for entry in _scan(self.store.directory):
            size = _size(entry)
            if entry.name.startswith(SEGMENT_PREFIX):
                segments += size
            else:
                used += size
                objects += not entry.name.endswith(".tmp")
        spilled = spilled_objects = 0
        for entry in _scan(self.store.spill_dir):
            spilled += _size(entry)
            spilled_objects += not entry.name.endswith(".tmp")
        return Usage(used, objects, segments, spilled, spilled_objects, self.limit)

    # ------------------------------------------------------------ reserving
    def reserve(self, size: int) -> dict[str, Any]:
        """Make room for ``size`` bytes; say where to write them.

        Returns ``{"segment": path}`` (a warm file to write into), ``{}`` (write a fresh
        file in the store), or ``{"disk": True}`` (too large for the store: write it to
        the spill directory).
        """
        if size > self.limit:
            return {"disk": True}
        segment = self._take_segment(size)
        if segment:
            return {"segment": segment}  # warm memory that is already counted: no growth
        usage = self.usage()
        if usage.used + usage.segments + size > self.limit * HIGH_WATER:
            self.drop_segments()  # spare warm memory goes before any object is spilled
            usage = self.usage()
            if usage.used + usage.segments + size > self.limit * HIGH_WATER:
                self.spill(target=int(self.limit * LOW_WATER) - size)
                usage = self.usage()
                if usage.used + size > self.limit:
                    return {"disk": True}
        return {}

    def spill(self, target: int) -> int:
        """Move the least recently used objects to disk until the store holds at most ``target`` bytes.

        Objects that some process maps right now go last: moving them frees no memory until
        their readers let go.
        """
        usage = self.usage()
        excess = usage.used - max(0, target)
        if excess <= 0:
            return 0
        files = [
            e for e in _scan(self.store.directory)
            if not e.name.endswith(".tmp") and not e.name.startswith(SEGMENT_PREFIX)
        ]
        files.sort(key=_atime)  # written or last read (ObjectStore.read touches it)
        moved = 0
        mapped = []
        for entry in files:
            if moved >= excess:
                break
            if _is_mapped(entry.path):
                mapped.append(entry)
            else:
                moved += self._spill_one(entry.name)
        for entry in mapped:
            if moved >= excess:
                break
            moved += self._spill_one(entry.name)
        if moved:
            log.info("spilled %d bytes of objects to %s", moved, self.store.spill_dir)
        return moved

    def _spill_one(self, name: str) -> int:
        src = os.path.join(self.store.directory, name)
        dst = os.path.join(self.store.spill_dir, name)
        tmp = f"{dst}.{os.getpid()}.tmp"
        os.makedirs(self.store.spill_dir, exist_ok=True)
        fd = open_shared(src)  # the lock keeps it from being recycled while we copy
        if fd is None:
            return 0  # freed meanwhile
        try:
            size = os.fstat(fd).st_size
            with open(fd, "rb", closefd=False) as f, open(tmp, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            os.rename(tmp, dst)  # readers now find it on disk...
            try:
                os.unlink(src)  # ...before it leaves memory; open mappings stay valid
            except FileNotFoundError:  # freed (and deleted) while we copied: no orphan on disk
                _unlink(dst)
                return 0
        except FileNotFoundError:  # freed meanwhile
            _unlink(tmp)
            return 0
        except OSError as exc:
            _unlink(tmp)
            log.warning("could not spill %s: %s", name, exc)
            return 0
        finally:
            os.close(fd)
        return size

    # ------------------------------------------------------------ warm segments
    def _take_segment(self, size: int) -> str | None:
        best: tuple[int, str] | None = None
        for entry in _scan(self.store.directory):
            if entry.name.startswith(SEGMENT_PREFIX) and not entry.name.endswith(".tmp"):
                seg_size = _size(entry)
                # At most twice the object: a small object must not hold a huge segment's memory.
                if size <= seg_size <= 2 * size and (best is None or seg_size < best[0]):
                    best = (seg_size, entry.path)
        if best is None:
            return None
        taken = f"{best[1]}.taken-{time.monotonic_ns()}"
        try:
            os.rename(best[1], taken)
            os.utime(taken)  # its age now counts from being taken (see sweep_stale)
        except FileNotFoundError:
            return None
        return taken

    def refill_segments(self) -> None:
        """Keep ``segment_count`` warm segments of ``segment_bytes`` ready (slow: call off the loop)."""
        spare = self._spare_segments()
        self._trim(spare)
        if not self.segment_bytes:
            return
        # Segments that fit the writes of the size we keep ready (freed objects may be smaller).
        have = [e for e in spare if _size(e) >= self.segment_bytes // 2]
        usage = self.usage()
        for _ in range(self.segment_count - len(have)):
            if usage.used + usage.segments + self.segment_bytes > self.limit * LOW_WATER:
                return  # objects need the room more than spare segments do
            self._segment_seq += 1
            path = os.path.join(self.store.directory, f"{SEGMENT_PREFIX}{os.getpid()}-{self._segment_seq}")
            tmp = path + ".tmp"
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.segment_bytes)  # allocates the pages now
                finally:
                    os.close(fd)
                os.rename(tmp, path)
            except OSError as exc:
                _unlink(tmp)
                log.info("no warm segment: %s", exc)
                return
            usage.segments += self.segment_bytes

    def drop_segments(self) -> None:
        """Give the memory of spare segments back (the store is full of objects, or idle)."""
        for entry in self._spare_segments():
            _unlink(entry.path)

    def _spare_segments(self) -> list[os.DirEntry[str]]:
        return [
            e for e in _scan(self.store.directory)
            if e.name.startswith(SEGMENT_PREFIX) and ".taken-" not in e.name and not e.name.endswith(".tmp")
        ]

    def _trim(self, spare: list[os.DirEntry[str]]) -> None:
        """Keep spare segments (freed objects pile up here) within a quarter of the store, newest first."""
        budget = self.limit // 4
        spare.sort(key=_mtime, reverse=True)
        kept = []
        for entry in spare:
            size = _size(entry)
            if size <= budget:
                budget -= size
                kept.append(entry)
            else:
                _unlink(entry.path)
        spare[:] = kept

    def sweep_stale(self, now: float | None = None) -> int:
        """Remove temporary files left by writers that died mid-write.

        A writer's file is ``<object>.<pid>.tmp``: it goes at once when that pid is gone,
        and after STALE_TMP_S in any case (a taken segment has no pid in its name).
        """
        now = time.time() if now is None else now
        removed = 0
        for directory in (self.store.directory, self.store.spill_dir):
            for entry in _scan(directory):
                if not (entry.name.endswith(".tmp") or ".taken-" in entry.name):
                    continue
                parts = entry.name.split(".")
                writer_dead = len(parts) >= 3 and parts[-2].isdigit() and not pid_alive(int(parts[-2]))
                try:
                    if writer_dead or now - _mtime(entry) > STALE_TMP_S:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _size(entry: os.DirEntry[str]) -> int:
    """A file's size, 0 when it was removed since the directory was read (objects come and go)."""
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _atime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_atime
    except FileNotFoundError:
        return 0.0


def _is_mapped(path: str) -> bool:
    """True while a reader holds the file (see ObjectStore.read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not lock_exclusive(fd)
    finally:
        os.close(fd)


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
