"""User values <-> bytes, and the value descriptors that travel in control frames.

Plain pickle (protocol 5, out-of-band buffers) first: it is 5x cheaper than cloudpickle.
cloudpickle only for what plain pickle refuses or what references ``__main__`` (a worker's
``__main__`` is not the driver's). See PERF-NOTES.

A *descriptor* says where a value is, as a msgpack-native list:

* ``[INLINE, pickle_bytes, [buffer_bytes, ...]]`` -- small values ride in the frame;
* ``[STORED, object_id, size, node_id]`` -- in that node's shared-memory store;
* ``[ERROR, pickled_exception]`` -- the task failed; ``get`` raises this.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    from asyncray._store.shm import ObjectStore

INLINE, STORED, ERROR, REF = 0, 1, 2, 3
# Values up to this size travel inline in control frames (SPEC section 2: ~100 KiB).
INLINE_MAX_BYTES = 100 * 1024


class _UseCloudpickle(Exception):
    pass


_collector = threading.local()


@contextlib.contextmanager
def collecting_refs(into: list[Any]) -> Iterator[list[Any]]:
    """Within the block, ObjectRefs pickled by this thread are appended to ``into``."""
    previous = getattr(_collector, "refs", None)
    _collector.refs = into
    try:
        yield into
    finally:
        _collector.refs = previous


def note_ref(ref: Any) -> bool:
    """Record a ref being pickled; False when nobody collects (the owner must then pin it)."""
    refs = getattr(_collector, "refs", None)
    if refs is None:
        return False
    refs.append(ref)
    return True


def dumps(value: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle a value; return the in-band bytes and the out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if b"__main__" in data:
            raise _UseCloudpickle
    except (_UseCloudpickle, pickle.PicklingError, AttributeError, TypeError):
        buffers = []
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return data, buffers


def dumps_function(fn: Any) -> bytes:
    """Pickle a function or class once, by value when it lives in ``__main__``."""
    return cloudpickle.dumps(fn, protocol=5)


def loads(data: bytes | memoryview, buffers: list[Any] | None = None) -> Any:
    """Unpickle, with out-of-band buffers when given."""
    return pickle.loads(data, buffers=buffers or ())


def error_descriptor(exc: BaseException) -> list[Any]:
    """Descriptor for a failure; falls back to a plain error when the exception won't pickle."""
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(blob)  # an exception that pickles may still fail to unpickle
        return [ERROR, blob]
    except Exception:
        from asyncray.exceptions import AsyncRayError

        return [ERROR, pickle.dumps(AsyncRayError(f"{type(exc).__name__}: {exc}"))]


def make_descriptor(
    value: Any, store: ObjectStore | None, object_id: bytes, *, already: tuple[bytes, list[pickle.PickleBuffer]] | None = None
) -> list[Any]:
    """Serialize a value: inline when small (or no store), else into the store."""
    data, bufs = already if already is not None else dumps(value)
    size = len(data)
    for b in bufs:
        size += b.raw().nbytes
    if size <= INLINE_MAX_BYTES or store is None:
        return [INLINE, data, [b.raw().tobytes() for b in bufs]]
    store.write(object_id, data, bufs)
    return [STORED, object_id, size, store.node_id]


def is_remote(desc: list[Any], store: ObjectStore | None) -> bool:
    """True for a stored object held by another node and not copied here yet."""
    return (
        desc[0] == STORED and store is not None and len(desc) > 3
        and desc[3] != store.node_id and not store.contains(desc[1])
    )


def descriptor_size(desc: list[Any]) -> int:
    """Bytes a descriptor stands for."""
    if desc[0] == INLINE:
        return len(desc[1]) + sum(len(b) for b in desc[2])
    if desc[0] == STORED:
        return int(desc[2])
    return len(desc[1])


def load_descriptor(desc: list[Any], store: ObjectStore | None) -> Any:
    """Rebuild the value; raise the stored error for ERROR descriptors."""
    kind = desc[0]
    if kind == INLINE:
        return pickle.loads(desc[1], buffers=desc[2])
    if kind == STORED:
        if store is None:
            raise RuntimeError("object is in a shared-memory store but this process has none")
        data, bufs = store.read(desc[1])
        return pickle.loads(data, buffers=bufs)
    if kind == ERROR:
        raise pickle.loads(desc[1])
    raise ValueError(f"unknown value descriptor kind {kind!r}")
