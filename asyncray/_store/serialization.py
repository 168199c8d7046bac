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

import collections
import contextlib
import io
import marshal
import pickle
import threading
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

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


# A top-level bytes or bytearray at least this large travels as an out-of-band buffer: it is
# written straight from the caller's object into shared memory, never copied into a pickle.
BINARY_OUT_OF_BAND_BYTES = 64 * 1024


def dumps(value: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle a value; return the in-band bytes and the out-of-band buffers."""
    kind = type(value)
    if kind is memoryview or ((kind is bytes or kind is bytearray) and len(value) >= BINARY_OUT_OF_BAND_BYTES):
        value = _Binary(value)  # pickle's own fast path would copy them in band (memoryview: refuse)
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if b"__main__" in data:
            raise _UseCloudpickle
    except (_UseCloudpickle, pickle.PicklingError, AttributeError, TypeError):
        buffers = []
        out = io.BytesIO()
        _CloudPickler(out, protocol=5, buffer_callback=buffers.append).dump(value)
        data = out.getvalue()
    return data, buffers


class _Binary:
    """Pickles a bytes, bytearray or memoryview as one out-of-band buffer."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        value = self.value
        if type(value) is memoryview:
            return _reduce_memoryview(value)
        return _rebuild_binary, (type(value) is bytearray, pickle.PickleBuffer(value))


def _rebuild_binary(mutable: bool, buf: Any) -> bytes | bytearray:
    """bytes and bytearray own their memory in CPython: this is the one copy out of the store."""
    if mutable:
        return bytearray(buf)
    return buf if type(buf) is bytes else bytes(buf)


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    if view.nbytes and view.format != "B":
        try:  # only native single-character formats can be rebuilt (memoryview.cast)
            memoryview(bytes(view.itemsize)).cast(view.format)  # type: ignore[call-overload]  # any format
        except (ValueError, TypeError):
            raise TypeError(
                f"a memoryview of format {view.format!r} cannot be rebuilt after pickling; "
                "put the array it views, or memoryview.cast('B')"
            ) from None
    buf: Any = pickle.PickleBuffer(view) if view.c_contiguous else view.tobytes()
    return _rebuild_memoryview, (buf, view.format, view.shape)


def _rebuild_memoryview(buf: Any, fmt: Any, shape: tuple[int, ...]) -> memoryview:
    """A memoryview of the stored bytes themselves (read-only, zero-copy), with its format and shape."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if fmt == "B" and len(shape) == 1:
        return view
    if view.nbytes == 0:  # memoryview cannot cast to a shape with zeros: keep the format only
        cast: memoryview = view.cast(fmt)
        return cast
    shaped: memoryview = view.cast(fmt, shape)
    return shaped


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    """A code object as its marshal bytes: file name and line table kept as compiled.

    cloudpickle (3.1.3 on) writes ``<dynamic-code>`` as the file name of every code object it
    pickles by value, so a remote traceback would no longer say which of the user's files
    raised. marshal is how Python itself stores code (.pyc); like cloudpickle's own bytecode
    payload it needs the same Python version on both ends, which a cluster has anyway.
    """
    return marshal.loads, (marshal.dumps(code),)


class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no types
    """cloudpickle that keeps code objects' file names and takes nested memoryviews (pickle refuses them)."""

    dispatch_table: ClassVar[Any] = collections.ChainMap(
        {memoryview: _reduce_memoryview, types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
    )


def _cloudpickle_dumps(obj: Any) -> bytes:
    out = io.BytesIO()
    _CloudPickler(out, protocol=5).dump(obj)
    return out.getvalue()


def dumps_function(fn: Any) -> bytes:
    """Pickle a function or class once, by value when it lives in ``__main__``."""
    return _cloudpickle_dumps(fn)


def loads(data: bytes | memoryview, buffers: list[Any] | None = None) -> Any:
    """Unpickle, with out-of-band buffers when given."""
    return pickle.loads(data, buffers=buffers or ())


def error_descriptor(exc: BaseException) -> list[Any]:
    """Descriptor for a failure; falls back to a plain error when the exception won't pickle."""
    try:
        blob = _cloudpickle_dumps(exc)
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
