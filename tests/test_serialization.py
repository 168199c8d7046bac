"""Pure unit tests for value serialization and the file-per-object store (STYLE section 8).

No loop, no sockets: the store is a ``tmp_path`` directory and every read maps a file.
"""

from __future__ import annotations

import mmap
import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncray._store import serialization as ser
from asyncray._store import shm
from asyncray._store.shm import ALIGN, MAGIC, ObjectStore
from asyncray.exceptions import AsyncRayError, TaskError

OID = bytes(range(20))


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return ObjectStore(str(tmp_path / "store"), create=True)


def over_msgpack(desc: list[Any]) -> list[Any]:
    """Descriptors ride in control frames: they must survive msgpack unchanged."""
    return msgpack.unpackb(msgpack.packb(desc, use_bin_type=True), raw=False)


def mapping_of(arr: np.ndarray) -> mmap.mmap:
    """Walk ``arr.base`` down to the memoryview and return the mmap it exports."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview), f"array is not backed by a buffer view: {type(base)}"
    assert isinstance(base.obj, mmap.mmap), f"buffer is a view of {type(base.obj)}, not of a mapping"
    return base.obj


def _big_array() -> np.ndarray:
    return np.arange(1024 * 1024 // 8, dtype=np.float64).reshape(128, 1024)


class _CustomError(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class _TwoArgError(Exception):
    """An exception whose ``args`` do not match its ``__init__`` (a common user pattern)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- inline values
@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -(2**70),
        3.25,
        "caf\u00e9",
        b"\x00\xff",
        bytearray(b"mutable"),
        (1, "two", 3.0),
        [1, [2, [3]]],
        {"a": 1, 2: "b", (3,): None},
        {1, 2, 3},
        frozenset({"x"}),
        ValueError("not raised, just a value"),
        np.arange(10, dtype=np.int32),
    ],
    ids=lambda v: type(v).__name__,
)
def test_small_values_travel_inline(value: Any, store: ObjectStore) -> None:
    desc = ser.make_descriptor(value, store, OID)
    assert desc[0] == ser.INLINE
    assert os.listdir(store.directory) == [], "an inline value must not touch the store"
    out = ser.load_descriptor(over_msgpack(desc), store)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(out, value)
        assert out.dtype == value.dtype
    elif isinstance(value, BaseException):
        assert type(out) is type(value) and out.args == value.args
    else:
        assert out == value and type(out) is type(value)


def test_inline_size_counts_out_of_band_buffers(store: ObjectStore) -> None:
    value = np.zeros(1000, dtype=np.uint8)
    desc = ser.make_descriptor(value, store, OID)
    assert desc[0] == ser.INLINE
    assert [len(b) for b in desc[2]] == [1000], "protocol 5 keeps the array data out of band"
    assert ser.descriptor_size(desc) == len(desc[1]) + 1000


def test_inline_threshold_is_inclusive(store: ObjectStore) -> None:
    probe = ser.INLINE_MAX_BYTES - 100  # same pickle opcodes and framing as at the limit
    data, bufs = ser.dumps(b"x" * probe)
    overhead = len(data) + sum(b.raw().nbytes for b in bufs) - probe
    at_limit = b"x" * (ser.INLINE_MAX_BYTES - overhead)
    desc = ser.make_descriptor(at_limit, store, OID)
    assert desc[0] == ser.INLINE and ser.descriptor_size(desc) == ser.INLINE_MAX_BYTES
    over = ser.make_descriptor(at_limit + b"x", store, OID)
    assert over[0] == ser.STORED and over[2] == ser.INLINE_MAX_BYTES + 1


def test_without_a_store_large_values_stay_inline() -> None:
    arr = _big_array()
    desc = ser.make_descriptor(arr, None, OID)
    assert desc[0] == ser.INLINE
    np.testing.assert_array_equal(ser.load_descriptor(desc, None), arr)


def test_already_pickled_value_is_not_pickled_again(store: ObjectStore) -> None:
    pickled = ser.dumps({"k": 1})
    desc = ser.make_descriptor(object(), store, OID, already=pickled)
    assert ser.load_descriptor(desc, store) == {"k": 1}


# ---------------------------------------------------------------- stored values
def test_large_array_goes_to_the_store_and_comes_back_zero_copy(store: ObjectStore) -> None:
    arr = _big_array()
    desc = ser.make_descriptor(arr, store, OID)
    assert desc[0] == ser.STORED
    assert desc[1] == OID
    assert desc[2] == ser.descriptor_size(desc) >= arr.nbytes
    assert store.contains(OID)

    out = ser.load_descriptor(over_msgpack(desc), store)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert not out.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0] = 1.0

    mm = mapping_of(out)
    whole = np.frombuffer(mm, dtype=np.uint8)
    start = whole.ctypes.data
    assert start <= out.ctypes.data and out.ctypes.data + out.nbytes <= start + len(mm), "data lies inside the mapping"
    assert np.shares_memory(out, whole)
    assert out.ctypes.data % ALIGN == 0, "buffers are aligned in the file, so in memory too"


def test_each_load_maps_the_file_again(store: ObjectStore) -> None:
    desc = ser.make_descriptor(_big_array(), store, OID)
    a = ser.load_descriptor(desc, store)
    b = ser.load_descriptor(desc, store)
    assert mapping_of(a) is not mapping_of(b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on a shared file mapping")
def test_loaded_array_reads_through_to_the_file(store: ObjectStore) -> None:
    """Proof of zero copy: bytes changed in the file show up in an array loaded earlier."""
    arr = np.zeros(1024 * 1024, dtype=np.uint8)
    desc = ser.make_descriptor(arr, store, OID)
    out = ser.load_descriptor(desc, store)
    offset = out.ctypes.data - np.frombuffer(mapping_of(out), dtype=np.uint8).ctypes.data
    fd = os.open(store.path(OID), os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x07", offset + 5)
    finally:
        os.close(fd)
    assert out[5] == 7


def test_loaded_array_outlives_delete_and_destroy(store: ObjectStore) -> None:
    arr = _big_array()
    out = ser.load_descriptor(ser.make_descriptor(arr, store, OID), store)
    store.delete(OID)
    store.destroy()
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.asfortranarray(_big_array()),
        lambda: _big_array()[:, ::2],
        lambda: {"a": _big_array(), "b": [np.ones(200_000, dtype=np.int8), "text"]},
        lambda: b"y" * 300_000,
        lambda: bytearray(300_000),
    ],
    ids=["fortran", "strided", "nested", "bytes", "bytearray"],
)
def test_other_large_values_round_trip_through_the_store(make: Any, store: ObjectStore) -> None:
    value = make()
    desc = ser.make_descriptor(value, store, OID)
    assert desc[0] == ser.STORED
    out = ser.load_descriptor(desc, store)
    if isinstance(value, dict):
        np.testing.assert_array_equal(out["a"], value["a"])
        np.testing.assert_array_equal(out["b"][0], value["b"][0])
        assert out["b"][1] == "text"
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(out, value)
        if value.flags.forc:
            assert out.flags.f_contiguous == value.flags.f_contiguous
    else:
        assert out == value and type(out) is type(value)


# ---------------------------------------------------------------- bytes, bytearray, memoryview
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_binary_is_written_out_of_band_not_copied_into_the_pickle(kind: type, store: ObjectStore) -> None:
    value = kind(os.urandom(ser.BINARY_OUT_OF_BAND_BYTES * 4))
    data, bufs = ser.dumps(value)
    assert len(data) < 200  # the payload is not in the pickle...
    assert [b.raw().nbytes for b in bufs] == [len(value)]  # ...it is one buffer, the caller's own memory
    assert bufs[0].raw().obj is value
    out = ser.load_descriptor(ser.make_descriptor(value, store, OID), store)
    assert out == value and type(out) is kind
    if kind is bytearray:
        out[0] ^= 1  # a bytearray comes back as a bytearray of its own (mutable, like the original)
        assert ser.load_descriptor(ser.make_descriptor(value, store, OID[::-1]), store) == value


def test_stored_memoryview_comes_back_as_a_read_only_view_of_shared_memory(store: ObjectStore) -> None:
    arr = np.arange(250_000, dtype=np.int32).reshape(500, 500)
    desc = ser.make_descriptor(memoryview(arr), store, OID)
    assert desc[0] == ser.STORED
    out = ser.load_descriptor(desc, store)
    assert type(out) is memoryview and out.readonly
    assert (out.format, out.shape) == ("i", (500, 500))
    assert out[499, 499] == arr[499, 499]
    assert isinstance(out.obj, mmap.mmap)  # zero-copy: the view is of the mapping itself


@pytest.mark.parametrize(
    "make",
    [
        lambda: memoryview(b"small"),
        lambda: memoryview(np.arange(100, dtype=np.float64))[::3],  # not contiguous: copied once, still a view
        lambda: [memoryview(b"nested"), "in a list"],
        lambda: memoryview(np.zeros((0, 4), dtype=np.int8)),
    ],
    ids=["small", "strided", "nested", "empty"],
)
def test_memoryviews_of_every_shape_round_trip(make: Any, store: ObjectStore) -> None:
    value = make()
    out = ser.load_descriptor(over_msgpack(ser.make_descriptor(value, None, OID)), None)
    if isinstance(value, list):
        assert out[0].tobytes() == b"nested" and out[1] == "in a list"
    else:
        assert type(out) is memoryview
        assert out.tobytes() == value.tobytes() and out.format == value.format


@pytest.mark.parametrize("dtype", [np.complex128, np.float16, ">i4"])
def test_memoryviews_that_cannot_be_rebuilt_are_refused_when_pickled(dtype: Any) -> None:
    with pytest.raises(TypeError, match="cannot be rebuilt after pickling"):
        ser.dumps(memoryview(np.zeros(3, dtype=dtype)))
    with pytest.raises(TypeError, match="cannot be rebuilt"):
        ser.dumps([memoryview(np.zeros(3, dtype=dtype)), lambda: 0])  # nested, through cloudpickle


def test_stored_descriptor_without_a_store_is_a_clear_error(store: ObjectStore) -> None:
    desc = ser.make_descriptor(_big_array(), store, OID)
    with pytest.raises(RuntimeError, match="shared-memory store"):
        ser.load_descriptor(desc, None)


def test_unknown_descriptor_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown value descriptor kind 99"):
        ser.load_descriptor([99, b""], None)


# ---------------------------------------------------------------- errors
def test_error_descriptor_raises_the_pickled_exception() -> None:
    desc = over_msgpack(ser.error_descriptor(_CustomError("boom", code=7)))
    assert desc[0] == ser.ERROR
    assert ser.descriptor_size(desc) == len(desc[1])
    with pytest.raises(_CustomError, match="boom") as info:
        ser.load_descriptor(desc, None)
    assert info.value.code == 7


def test_error_descriptor_of_a_task_error_keeps_both_classes() -> None:
    err = TaskError.wrap(KeyError("missing"), "f", "Traceback: ...")
    with pytest.raises(KeyError) as info:
        ser.load_descriptor(ser.error_descriptor(err), None)
    assert isinstance(info.value, TaskError)
    assert info.value.function_name == "f"
    assert info.value.traceback_text == "Traceback: ..."


def test_unpicklable_exception_falls_back_to_a_plain_error() -> None:
    exc = _CustomError("holds a lock")
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    desc = ser.error_descriptor(exc)
    with pytest.raises(AsyncRayError, match="_CustomError: holds a lock"):
        ser.load_descriptor(desc, None)


def test_exception_whose_init_takes_other_arguments_still_comes_back() -> None:
    desc = ser.error_descriptor(TaskError.wrap(_TwoArgError("bad", 3), "f", "tb"))
    with pytest.raises(_TwoArgError, match="bad") as info:
        ser.load_descriptor(desc, None)
    assert isinstance(info.value, TaskError)


# ---------------------------------------------------------------- __main__ and cloudpickle
def _main_class() -> type:
    cls = type("MainThing", (), {"__module__": "__main__", "double": lambda self: self.x * 2})
    return cls


def test_value_of_a_class_from_main_uses_cloudpickle() -> None:
    cls = _main_class()
    assert not hasattr(sys.modules["__main__"], "MainThing")
    obj = cls()
    obj.x = 21
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(obj, protocol=5)

    data, bufs = ser.dumps(obj)
    assert b"cloudpickle" in data, "the class travels by value"
    out = ser.loads(data, bufs)
    assert type(out).__name__ == "MainThing" and out.x == 21 and out.double() == 42


def test_main_reference_goes_by_value_even_when_plain_pickle_would_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's ``__main__`` is not the driver's, so a by-reference pickle would not load there."""
    cls = _main_class()
    monkeypatch.setattr(sys.modules["__main__"], "MainThing", cls, raising=False)
    obj = cls()
    obj.x = 5
    pickle.dumps(obj, protocol=5)  # plain pickle succeeds here...
    data, bufs = ser.dumps(obj)
    monkeypatch.undo()  # ...but the receiving side has no __main__.MainThing
    assert not hasattr(sys.modules["__main__"], "MainThing")
    assert ser.loads(data, bufs).double() == 10


def test_main_value_with_large_array_keeps_buffers_out_of_band(store: ObjectStore) -> None:
    obj = _main_class()()
    obj.x = _big_array()
    desc = ser.make_descriptor(obj, store, OID)
    assert desc[0] == ser.STORED
    out = ser.load_descriptor(desc, store)
    np.testing.assert_array_equal(out.x, obj.x)
    mapping_of(out.x)


def test_lambdas_and_local_functions_use_cloudpickle() -> None:
    k = 3

    def local(y: int) -> int:
        return y + k

    for fn in (lambda y: y * k, local):
        data, bufs = ser.dumps(fn)
        assert ser.loads(data, bufs)(2) == fn(2)
    assert pickle.loads(ser.dumps_function(local))(1) == 4


# ---------------------------------------------------------------- the object store
def test_write_is_atomic_and_leaves_no_temporary_file(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data, bufs = ser.dumps(_big_array())
    seen: dict[str, Any] = {}
    real_rename = os.rename

    def spy_rename(src: str, dst: str) -> None:
        seen["src"], seen["dst"] = src, dst
        seen["final_existed"] = os.path.exists(dst)
        seen["listing"] = sorted(os.listdir(store.directory))
        seen["tmp_size"] = os.path.getsize(src)
        real_rename(src, dst)

    monkeypatch.setattr(shm.os, "rename", spy_rename)
    size = store.write(OID, data, bufs)
    monkeypatch.undo()

    assert seen["dst"] == store.path(OID)
    assert seen["src"].endswith(".tmp") and os.path.dirname(seen["src"]) == store.directory
    assert not seen["final_existed"], "the final name appears only through the rename"
    assert seen["listing"] == [os.path.basename(seen["src"])]
    assert seen["tmp_size"] == size, "the temporary file is complete before it is renamed"
    assert os.listdir(store.directory) == [OID.hex()]
    assert os.path.getsize(store.path(OID)) == size


def test_failed_write_leaves_nothing_behind(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data, bufs = ser.dumps(_big_array())
    calls = 0
    real_pwrite = os.pwrite

    def failing_pwrite(fd: int, buf: Any, off: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, buf, off)

    monkeypatch.setattr(shm.os, "pwrite", failing_pwrite)
    from asyncray.exceptions import OutOfMemoryError

    with pytest.raises(OutOfMemoryError, match=r"no room for a \d+-byte object"):
        store.write(OID, data, bufs)
    monkeypatch.undo()
    assert os.listdir(store.directory) == []
    assert not store.contains(OID)


def test_short_writes_are_completed(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def short_pwrite(fd: int, buf: Any, off: int) -> int:
        return real_pwrite(fd, memoryview(buf)[:4096], off)

    data, bufs = ser.dumps(_big_array())
    monkeypatch.setattr(shm.os, "pwrite", short_pwrite)
    store.write(OID, data, bufs)
    monkeypatch.undo()
    got, views = store.read(OID)
    np.testing.assert_array_equal(pickle.loads(got, buffers=views), _big_array())


def test_file_layout_starts_with_magic_and_aligns_every_part(store: ObjectStore) -> None:
    store.write(OID, b"pickle-bytes", [pickle.PickleBuffer(b"a" * 3), pickle.PickleBuffer(b"b" * 100)])
    raw = Path(store.path(OID)).read_bytes()
    assert raw[:4] == MAGIC
    data, views = store.read(OID)
    assert bytes(data) == b"pickle-bytes"
    assert [bytes(v) for v in views] == [b"a" * 3, b"b" * 100]
    base = np.frombuffer(mapping_of(np.frombuffer(data, dtype=np.uint8)), dtype=np.uint8).ctypes.data
    for view in (data, *views):
        assert (np.frombuffer(view, dtype=np.uint8).ctypes.data - base) % ALIGN == 0
        assert view.readonly


def test_write_and_read_with_no_buffers(store: ObjectStore) -> None:
    store.write(OID, b"only-data", [])
    data, views = store.read(OID)
    assert bytes(data) == b"only-data" and views == []


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=1, max_size=300), buffers=st.lists(st.binary(max_size=300), max_size=5))
def test_store_round_trips_arbitrary_parts(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, buffers: list[bytes]
) -> None:
    store = ObjectStore(str(tmp_path_factory.mktemp("prop")), create=True)
    store.write(OID, data, [pickle.PickleBuffer(b) for b in buffers])
    got, views = store.read(OID)
    assert bytes(got) == data
    assert [bytes(v) for v in views] == buffers
    store.destroy()


def test_overwriting_an_object_replaces_it(store: ObjectStore) -> None:
    store.write(OID, b"first", [])
    store.write(OID, b"second", [])
    assert bytes(store.read(OID)[0]) == b"second"
    assert os.listdir(store.directory) == [OID.hex()]


def test_corrupt_file_is_reported(store: ObjectStore) -> None:
    Path(store.path(OID)).write_bytes(b"JUNK" + bytes(60))
    with pytest.raises(ValueError, match=f"{OID.hex()} is corrupt"):
        store.read(OID)


def test_contains_and_delete_is_idempotent(store: ObjectStore) -> None:
    assert not store.contains(OID)
    store.delete(OID)  # never written: no error
    store.write(OID, b"x", [])
    assert store.contains(OID)
    store.delete(OID)
    assert not store.contains(OID)
    store.delete(OID)
    assert os.listdir(store.directory) == []


def test_only_the_creating_store_makes_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    ObjectStore(str(path))
    assert not path.exists(), "a reader or worker opening the store must not create it"
    first = ObjectStore(str(path), create=True)
    assert path.is_dir()
    first.write(OID, b"kept", [])
    ObjectStore(str(path), create=True)  # an existing directory is fine
    second = ObjectStore(str(path))
    assert bytes(second.read(OID)[0]) == b"kept"


def test_destroy_removes_the_directory_and_is_idempotent(store: ObjectStore) -> None:
    store.write(OID, b"x", [])
    store.write(bytes(20), b"y", [])
    store.destroy()
    assert not os.path.exists(store.directory)
    store.destroy()
    assert not os.path.exists(store.directory)


def test_path_is_the_hex_object_id_inside_the_directory(store: ObjectStore) -> None:
    assert store.path(OID) == os.path.join(store.directory, OID.hex())


def test_store_usage_tolerates_objects_freed_while_it_measures(tmp_path) -> None:
    """Objects are freed by other processes at any time; measuring must never fail on that."""
    from asyncray._store import manager as mgr

    store = ObjectStore(str(tmp_path / "store"), create=True)
    for i in range(3):
        (tmp_path / "store" / f"{i:032x}").write_bytes(b"x" * 100)
    entries = mgr._scan(store.directory)
    os.unlink(entries[0].path)  # freed between reading the directory and asking for sizes
    assert sorted(mgr._size(e) for e in entries) == [0, 100, 100]
    manager = mgr.StoreManager(store, 10_000)
    assert manager.reserve(100) == {}  # and a reservation still gets an answer


def test_spilling_moves_the_least_recently_used_unmapped_objects_first(tmp_path) -> None:
    import time

    from asyncray._store import manager as mgr

    store = ObjectStore(str(tmp_path / "store"), create=True)
    ids = [bytes([i]) * 16 for i in range(4)]

    def read(i: int) -> Any:
        time.sleep(0.03)  # file times are coarse
        return ser.load_descriptor([ser.STORED, ids[i], 0, b""], store)

    for i, oid in enumerate(ids):
        ser.make_descriptor(np.full(200_000, float(i)), store, oid)
    mapped = read(0)  # 0 stays mapped by a reader
    read(1)
    read(2)
    read(1)  # use order now: 3 (never read), 0, 2, 1
    manager = mgr.StoreManager(store, 10**9)
    one = os.path.getsize(store.path(ids[0]))
    assert manager.spill(target=2 * one) == 2 * one
    in_memory = {oid for oid in ids if os.path.exists(store.path(oid))}
    assert in_memory == {ids[0], ids[1]}  # 3 and 2 went: the least recently used that nobody maps
    assert float(read(2)[7]) == 2.0  # back from disk
    assert float(mapped[-1]) == 0.0
