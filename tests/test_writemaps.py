"""A writer's kept mappings: the next write into a recycled file is a copy into memory it mapped."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
from conftest import wait_for

from asyncray._store import writemaps
from asyncray._store.shm import LARGE_OBJECT_BYTES, ObjectStore

pytestmark = pytest.mark.timeout(60)


def _put(store: ObjectStore, oid: bytes, value: object) -> None:
    bufs: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    store.write(oid, data, bufs)


def _get(store: ObjectStore, oid: bytes) -> object:
    data, bufs = store.read(oid)
    return pickle.loads(data, buffers=bufs)


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(str(tmp_path / "store"), create=True)
    yield s
    s.destroy()


def _recycle_into(store: ObjectStore, oid: bytes, new_oid: bytes) -> None:
    """Free ``oid`` (it becomes a segment) and hand that segment to the next write of ``new_oid``."""
    store.delete(oid)
    segments = [e.path for e in os.scandir(store.directory) if e.name.startswith("segment-")]
    assert len(segments) == 1, "a freed large object nobody maps becomes a warm segment"
    store.reserve = lambda size: {"segment": segments.pop()}


def test_the_second_write_into_a_file_goes_through_its_kept_mapping(store, monkeypatch):
    rng = np.random.default_rng(7)
    first = rng.random(LARGE_OBJECT_BYTES // 8 + 1000)
    _put(store, b"a" * 16, first)
    kept = store._write_maps._kept
    assert len(kept) == 1
    assert wait_for(lambda: next(iter(kept.values())).mapped.done())  # mapped on the helper thread
    copies = []
    real_copy = writemaps.WriteMaps._copy
    monkeypatch.setattr(writemaps.WriteMaps, "_copy", lambda self, *a: copies.append(1) or real_copy(self, *a))
    _recycle_into(store, b"a" * 16, b"b" * 16)
    second = rng.random(first.size)  # other contents, same size: the same file is reused
    _put(store, b"b" * 16, second)
    assert copies == [1], "the write did not use the kept mapping"
    assert np.array_equal(_get(store, b"b" * 16), second)  # every byte, both halves of the split copy


def test_without_numpy_loaded_writers_use_pwrite(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)
    payload = os.urandom(LARGE_OBJECT_BYTES + 123)
    store.write(b"c" * 16, pickle.dumps(b"x"), [pickle.PickleBuffer(payload)])
    assert store._write_maps._kept == {}
    _, bufs = store.read(b"c" * 16)
    assert bytes(bufs[0]) == payload


def test_mappings_of_removed_files_and_idle_ones_are_let_go(store, monkeypatch):
    _put(store, b"d" * 16, np.ones(LARGE_OBJECT_BYTES // 8))
    _put(store, b"e" * 16, np.ones(LARGE_OBJECT_BYTES // 8))
    maps = store._write_maps
    assert len(maps._kept) == 2
    os.unlink(store.path(b"d" * 16))  # e.g. spilled to disk: the memory must go back
    maps._expire()
    assert len(maps._kept) == 1
    monkeypatch.setattr(writemaps, "IDLE_S", 0.0)
    maps._expire()
    assert maps._kept == {}


def test_small_objects_are_not_kept(store):
    _put(store, b"f" * 16, np.ones(1000))
    assert store._write_maps._kept == {}
