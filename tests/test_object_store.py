"""The shared-memory object store seen from user code: zero-copy, freeing, spilling, crashes."""

from __future__ import annotations

import hashlib
import os
import re
import time

import numpy as np
import pytest
from conftest import wait_for

import asyncray
from asyncray import exceptions as exc

pytestmark = pytest.mark.timeout(120)


def _store_dir() -> str:
    core = asyncray._client.context.get_core()
    return core.store.directory


def _store_bytes() -> int:
    d = _store_dir()
    return sum(e.stat().st_size for e in os.scandir(d) if not e.name.startswith("segment-"))


def _spill_dir() -> str:
    return asyncray._client.context.get_core().store.spill_dir


@asyncray.remote
def checksum(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@asyncray.remote
def hold_then_read(nested, seconds):
    time.sleep(seconds)
    return float(asyncray.get(nested[0]).sum())


@asyncray.remote
class Keeper:
    def __init__(self):
        self.kept = None

    def keep(self, nested):
        self.kept = nested

    def total(self):
        return float(asyncray.get(self.kept[0]).sum())

    def drop(self):
        self.kept = None


def test_large_get_is_zero_copy_and_read_only(ray):
    a = np.arange(20_000_000, dtype=np.float64)  # 160 MB
    ref = ray.put(a)
    t = time.perf_counter()
    b = ray.get(ref)
    elapsed = time.perf_counter() - t
    assert elapsed < 0.05
    assert not b.flags.writeable
    assert b[-1] == a[-1] and b.shape == a.shape
    base = b
    while getattr(base, "base", None) is not None:
        base = base.base
    assert "mmap" in repr(type(getattr(base, "obj", base))) or isinstance(base, memoryview)
    small = ray.put(np.arange(200_000, dtype=np.float64))
    t = time.perf_counter()
    ray.get(small)
    assert time.perf_counter() - t < 0.05  # about the same whatever the size


def test_put_and_drop_keeps_the_store_near_its_baseline(ray):
    base = _store_bytes()
    chunk = np.ones(10 * 2**20 // 8)  # 10 MB
    peak = 0
    for i in range(1000):
        ref = ray.put(chunk)
        del ref
        if i % 50 == 0:
            peak = max(peak, _store_bytes() - base)
    assert peak <= 30 * 2**20, f"store grew by {peak / 2**20:.0f} MB while objects were dropped"
    assert wait_for(lambda: _store_bytes() - base <= 10 * 2**20, 5)


def test_refs_nested_in_arguments_stay_alive_while_the_task_runs(ray):
    big = ray.put(np.ones(1_000_000))  # 8 MB: in the store
    path = os.path.join(_store_dir(), big.hex())
    result = hold_then_read.remote([big], 0.5)
    del big  # only the running task's argument holds it now
    assert ray.get(result) == 1_000_000.0
    assert wait_for(lambda: not os.path.exists(path), 5), "the object outlived every reference"


def test_an_actor_keeps_a_ref_it_stores(ray):
    big = ray.put(np.full(1_000_000, 2.0))
    path = os.path.join(_store_dir(), big.hex())
    keeper = Keeper.remote()
    ray.get(keeper.keep.remote([big]))
    del big
    time.sleep(0.3)
    assert os.path.exists(path)
    assert ray.get(keeper.total.remote()) == 2_000_000.0
    ray.get(keeper.drop.remote())
    assert wait_for(lambda: not os.path.exists(path), 5), "the actor dropped the last ref but the object stayed"


def test_refs_inside_a_stored_value_live_as_long_as_it(ray):
    inner = ray.put(np.full(1_000_000, 3.0))
    path = os.path.join(_store_dir(), inner.hex())
    outer = ray.put({"inner": inner})
    del inner
    time.sleep(0.2)
    assert os.path.exists(path)
    assert float(ray.get(ray.get(outer)["inner"]).sum()) == 3_000_000.0
    del outer
    assert wait_for(lambda: not os.path.exists(path), 5)


def test_available_object_store_memory_is_reported(ray):
    limit = ray.cluster_resources()["object_store_memory"]
    ref = ray.put(np.ones(50 * 2**20 // 8))  # 50 MB

    def used() -> float:
        return limit - ray.available_resources()["object_store_memory"]

    assert wait_for(lambda: used() >= 50 * 2**20, 5), used()
    del ref
    assert wait_for(lambda: used() < 50 * 2**20, 5), used()


def test_spilling_keeps_every_object_intact():
    asyncray.shutdown()  # this test needs a small store of its own
    asyncray.init(num_cpus=1, object_store_memory=64 * 2**20)
    try:
        arrays = [np.random.default_rng(i).random(2 * 2**20) for i in range(12)]  # 12 x 16 MB
        sums = [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
        refs = [asyncray.put(a) for a in arrays]
        del arrays
        assert os.listdir(_spill_dir()), "nothing was spilled although the data is 3x the store"
        assert _store_bytes() <= 64 * 2**20
        assert [hashlib.sha256(v.tobytes()).hexdigest() for v in asyncray.get(refs)] == sums
        assert asyncray.get([checksum.remote(r) for r in refs]) == sums  # workers read spilled ones too
        big = asyncray.put(np.ones(10 * 2**20))  # 80 MB: larger than the whole store
        assert asyncray.get(big).sum() == 10 * 2**20
    finally:
        asyncray.shutdown()


def test_a_worker_dying_mid_write_leaves_nothing_visible():
    asyncray.shutdown()
    asyncray.init(num_cpus=1)
    try:
        @asyncray.remote(max_retries=0)
        def die_while_writing():
            from asyncray._store import shm

            real = shm.os.pwrite

            def pwrite_then_die(fd, data, off):
                real(fd, memoryview(data)[: 1 << 20], off)
                os._exit(1)

            shm.os.pwrite = pwrite_then_die
            return np.ones(4 * 2**20)  # 32 MB: goes to the store

        ref = die_while_writing.remote()
        with pytest.raises(exc.WorkerCrashedError):
            asyncray.get(ref, timeout=30)
        store = _store_dir()
        assert not os.path.exists(os.path.join(store, ref.hex()))
        assert wait_for(lambda: not [n for n in os.listdir(store) if n.endswith(".tmp")], 10), os.listdir(store)
    finally:
        asyncray.shutdown()


@asyncray.remote
def make_inner(n):
    return [asyncray.put(np.full(n, 4.0))]  # a ref owned by this worker, inside the result


def test_refs_returned_inside_a_result_are_freed_after_use():
    asyncray.shutdown()
    asyncray.init(num_cpus=1, include_dashboard=False)
    try:
        outer = make_inner.remote(1_000_000)  # 8 MB inner object: in the store
        inner = asyncray.get(outer)[0]
        path = os.path.join(_store_dir(), inner.hex())
        assert float(asyncray.get(inner).sum()) == 4_000_000.0
        assert os.path.exists(path)
        del outer
        time.sleep(0.3)
        assert os.path.exists(path), "freed while the driver still holds the inner ref"
        del inner
        assert wait_for(lambda: not os.path.exists(path), 5), "a ref returned inside a result is never freed"
        # The same when the caller never looks inside the result.
        outer = make_inner.remote(1_000_000)
        asyncray.wait([outer])
        before = set(os.listdir(_store_dir()))
        assert before
        del outer
        assert wait_for(lambda: not set(os.listdir(_store_dir())) & before, 5)
    finally:
        asyncray.shutdown()


@asyncray.remote
class Viewer:
    """Keeps a zero-copy array of an object, not the ref to it."""

    def __init__(self):
        self.view = None

    def take(self, nested):
        self.view = asyncray.get(nested[0])
        return float(self.view[0])

    def ends(self):
        return float(self.view[0]), float(self.view[-1])


def _object_path(ref) -> str:
    return os.path.join(_store_dir(), ref.hex())


def test_freed_memory_is_reused_for_the_next_large_object(fresh_ray):
    ray = fresh_ray
    n = 4 * 2**20  # 32 MB: large enough to be recycled
    ref = ray.put(np.full(n, 1.0))
    path = _object_path(ref)
    inode = os.stat(path).st_ino
    del ref
    assert wait_for(lambda: not os.path.exists(path))
    ref = ray.put(np.full(n, 2.0))
    assert os.stat(_object_path(ref)).st_ino == inode  # the same pages, written again
    assert np.all(ray.get(ref) == 2.0)


def test_a_freed_object_still_mapped_somewhere_keeps_its_contents(fresh_ray):
    """Recycling must never overwrite memory that a zero-copy array still shows."""
    ray = fresh_ray
    n = 4 * 2**20
    ref = ray.put(np.full(n, 7.0))
    path = _object_path(ref)
    mine = ray.get(ref)  # mapped by the driver...
    viewer = Viewer.remote()
    assert ray.get(viewer.take.remote([ref])) == 7.0  # ...and by an actor's worker
    del ref
    assert wait_for(lambda: not os.path.exists(path))  # freed everywhere
    for i in range(4):
        r = ray.put(np.full(n, float(i)))
        assert np.all(ray.get(r) == float(i))
        del r
    assert np.all(mine == 7.0)
    del mine  # now only the actor maps it
    for i in range(4):
        r = ray.put(np.full(n, float(i)))
        del r
    assert ray.get(viewer.ends.remote()) == (7.0, 7.0)
    asyncray.kill(viewer)


@asyncray.remote
def view_info(v):
    return type(v).__name__, v.readonly, v.nbytes, bytes(v[:4])


@asyncray.remote
def make_view(n):
    return memoryview(bytes(range(256)) * (n // 256))


def test_bytes_bytearray_and_memoryview_payloads(fresh_ray):
    import mmap

    ray = fresh_ray
    blob = os.urandom(3 * 2**20)
    assert ray.get(ray.put(blob)) == blob
    out = ray.get(ray.put(bytearray(blob)))
    assert type(out) is bytearray and out == blob
    view = ray.get(ray.put(memoryview(blob)))
    assert type(view) is memoryview and view.readonly and isinstance(view.obj, mmap.mmap)  # zero-copy
    assert view.tobytes() == blob
    assert ray.get(view_info.remote(memoryview(blob))) == ("memoryview", True, len(blob), blob[:4])
    made = ray.get(make_view.remote(2**20))
    assert type(made) is memoryview and made.nbytes == 2**20 and made[:3].tobytes() == b"\x00\x01\x02"


@asyncray.remote
class Maker:
    """Owns an object and hands out refs to it."""

    def make(self, n):
        self.ref = asyncray.put(np.ones(n))
        return [self.ref]

    def drop(self):
        self.ref = None


@asyncray.remote
def pass_through(nested):
    return nested  # refs it borrowed from a third process, returned inside its result


@asyncray.remote
class Holder:
    def __init__(self, nested):
        self.nested = nested

    def total(self):
        return float(asyncray.get(self.nested[0]).sum())


def test_refs_owned_by_a_third_process_and_returned_in_a_result_are_freed(fresh_ray):
    ray = fresh_ray
    maker = Maker.remote()
    [ref] = ray.get(maker.make.remote(2**20))  # 8 MB in the store, owned by the actor
    path = _object_path(ref)
    back = ray.get(pass_through.remote([ref]))  # a worker held it for us, then handed it over
    assert back == [ref] and float(ray.get(back[0]).sum()) == 2**20
    ray.get(maker.drop.remote())
    assert os.path.exists(path)  # we still hold two refs to it
    del ref
    assert float(ray.get(back[0]).sum()) == 2**20
    del back
    assert wait_for(lambda: not os.path.exists(path), timeout=10)  # no one holds it: freed, workers still running


def test_refs_in_actor_constructor_arguments_live_with_the_actor_then_go(fresh_ray):
    ray = fresh_ray
    ref = ray.put(np.ones(2**20))
    path = _object_path(ref)
    holder = Holder.remote([ref])
    del ref
    assert ray.get(holder.total.remote()) == 2**20
    time.sleep(0.3)
    assert os.path.exists(path)  # the actor holds it
    ray.kill(holder)
    assert wait_for(lambda: not os.path.exists(path), timeout=10)


def test_store_and_spill_directories_can_be_chosen(tmp_path):
    if asyncray.is_initialized():
        asyncray.shutdown()
    store_root, spill_root = tmp_path / "store", tmp_path / "spill"
    store_root.mkdir()
    spill_root.mkdir()
    asyncray.init(
        num_cpus=1, object_store_memory=30 * 2**20, object_store_dir=str(store_root), object_spilling_dir=str(spill_root),
    )
    try:
        refs = [asyncray.put(np.full(2**20, float(i))) for i in range(6)]  # 48 MB into a 30 MB store
        assert _store_dir().startswith(str(store_root))
        assert os.listdir(_store_dir()) and os.listdir(_spill_dir())
        assert _spill_dir().startswith(str(spill_root))
        assert [float(asyncray.get(r)[-1]) for r in refs] == [float(i) for i in range(6)]
    finally:
        asyncray.shutdown()
    assert os.listdir(store_root) == [] and os.listdir(spill_root) == []  # what it made there is gone


def test_bad_store_directories_fail_at_init(tmp_path):
    if asyncray.is_initialized():
        asyncray.shutdown()
    with pytest.raises(ValueError, match="object_store_dir.*existing directory"):
        asyncray.init(object_store_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="object_spilling_dir.*existing directory"):
        asyncray.init(object_spilling_dir=42)
    assert not asyncray.is_initialized()


@pytest.fixture
def small_disks(tmp_path):
    """Two real 24 MiB tmpfs mounts (store, spill): a disk that really fills up."""
    import subprocess

    mounts = [tmp_path / "store-fs", tmp_path / "spill-fs"]
    done = []
    try:
        for m in mounts:
            m.mkdir()
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(m)], check=False, capture_output=True, text=True
            )
            if r.returncode != 0:
                pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
            done.append(m)
        yield mounts
    finally:
        for m in done:
            subprocess.run(["umount", "-l", str(m)], check=False)


def test_put_fails_with_out_of_memory_only_when_the_spill_disk_is_full_too(small_disks):
    if asyncray.is_initialized():
        asyncray.shutdown()
    store_fs, spill_fs = small_disks
    asyncray.init(num_cpus=1, object_store_memory=20 * 2**20, object_store_dir=str(store_fs), object_spilling_dir=str(spill_fs))
    try:
        kept, sums = [], []
        with pytest.raises(exc.OutOfMemoryError) as info:
            for i in range(20):  # 20 x 4 MiB = 80 MiB > 24 MiB of memory + 24 MiB of disk
                a = np.random.default_rng(i).random(2**19)
                ref = asyncray.put(a)
                kept.append(ref)
                sums.append(hashlib.sha256(a.tobytes()).hexdigest())
        assert 8 <= len(kept) < 20, len(kept)  # memory, then disk, were used before it failed
        assert re.search(r"no room for a \d+-byte object", str(info.value)), str(info.value)
        assert os.listdir(_spill_dir()), "nothing was spilled before giving up"
        assert asyncray.get([checksum.remote(r) for r in kept]) == sums  # nothing lost or corrupted
    finally:
        asyncray.shutdown()
    assert os.listdir(store_fs) == [] and os.listdir(spill_fs) == []


@asyncray.remote
def make_nested():
    return [asyncray.put(np.ones(1_000_000))]  # owned by this worker, borrowed by the caller


def test_a_worker_owning_objects_is_marked_so_its_node_does_not_reap_it(fresh_ray):
    from asyncray._client import runtime

    ray = fresh_ray
    workers = runtime.current().node.scheduler.workers
    nested = ray.get(make_nested.remote())
    assert wait_for(lambda: [r.owns_objects for r in workers.values()].count(True) == 1, timeout=5)
    assert float(ray.get(nested[0]).sum()) == 1_000_000
    del nested
    assert wait_for(lambda: not any(r.owns_objects for r in workers.values()), timeout=5)


def test_a_store_fuller_than_measured_writes_to_disk_instead(small_disks):
    """Memory the node counted as free may still be held (a mapping of a removed file): no error, disk."""
    import pickle

    from asyncray._store.shm import ObjectStore

    store_fs, spill_fs = small_disks
    store = ObjectStore(str(store_fs / "s"), create=True, spill_dir=str(spill_fs / "sp"))
    with open(store_fs / "s" / "ballast", "wb") as f:
        f.write(b"\0" * (20 * 2**20))  # the memory file system is nearly full
    value = np.random.default_rng(3).random(2**19)  # 4 MiB
    bufs: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    store.write(b"o" * 16, data, bufs)
    assert not os.path.exists(store.path(b"o" * 16)) and os.path.exists(store.spill_path(b"o" * 16))
    d, b = store.read(b"o" * 16)
    assert np.array_equal(pickle.loads(d, buffers=b), value)
    del d, b
    store.destroy()
