"""asyncray.util.multiprocessing.Pool (the stdlib's Pool on actors), as_completed and map_unordered."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import threading
import time

import pytest
from conftest import is_running, wait_for
from test_examples import run_example

import asyncray
from asyncray.util import as_completed, map_unordered
from asyncray.util.multiprocessing import Pool

INIT_VAR = "ASYNCRAY_TEST_POOL_INIT"


def square(x):
    return x * x


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def sleep_and_return(x):
    time.sleep(x)
    return x


def pid_of(_):
    return os.getpid()


def add(a, b):
    return a + b


def greet(name, *, punct="!"):
    return f"hi {name}{punct}"


def fail_on_three(x):
    if x == 3:
        raise KeyError(f"bad item {x}")
    return x


@asyncray.remote(num_cpus=0)
class Recorder:
    """Collects what pool processes report (takes no CPU, so the pool's actors can have both)."""

    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)

    def get(self):
        return self.items


def record_start(recorder, tag):
    # The initializer: leaves a mark in the process and tells the recorder which process ran it.
    os.environ[INIT_VAR] = tag
    asyncray.get(recorder.add.remote(os.getpid()))


def read_mark(_):
    time.sleep(0.05)
    return os.getpid(), os.environ.get(INIT_VAR)


def pids_of_pool(pool, n=2):
    """The pids of a pool's processes: calls long enough that each process takes one."""
    return set(pool.map(pid_after, [0.3] * n, chunksize=1))


def test_map_imap_starmap_values_and_order(ray):
    with Pool(processes=2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(square, range(20), chunksize=3) == [x * x for x in range(20)]
        assert pool.map(square, []) == []
        assert list(pool.imap(square, range(15))) == [x * x for x in range(15)]
        assert list(pool.imap(square, iter(range(15)), chunksize=4)) == [x * x for x in range(15)]
        assert list(pool.imap(square, [])) == []
        assert pool.starmap(add, [(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]
        assert pool.starmap_async(add, [(i, i) for i in range(9)], chunksize=2).get(timeout=30) == list(range(0, 18, 2))
        assert pool.map_async(square, range(5)).get(timeout=30) == [0, 1, 4, 9, 16]
        assert pool.apply(greet, ("ann",), {"punct": "?"}) == "hi ann?"
        # Results come back in input order even when early items take longest.
        assert list(pool.imap(sleep_and_return, [0.4, 0.0, 0.1, 0.0])) == [0.4, 0.0, 0.1, 0.0]
        assert pool.map(sleep_and_return, [0.3, 0.0, 0.0, 0.0], chunksize=1) == [0.3, 0.0, 0.0, 0.0]


def test_imap_unordered_yields_everything(ray):
    with Pool(processes=2) as pool:
        assert sorted(pool.imap_unordered(square, range(30))) == [x * x for x in range(30)]
        assert sorted(pool.imap_unordered(square, range(30), chunksize=7)) == [x * x for x in range(30)]
        # A slow first item does not hold back the others.
        it = pool.imap_unordered(time.sleep, [1.0, 0.0, 0.0, 0.0], chunksize=1)
        t = time.monotonic()
        for _ in range(3):
            it.next(timeout=10)
        assert time.monotonic() - t < 0.9
        assert it.next(timeout=10) is None
        with pytest.raises(StopIteration):
            it.next(timeout=10)


def test_chunksize_is_one_actor_call_per_chunk(ray):
    # With one task per process, each chunk runs in a process of its own: pids group by chunk.
    with Pool(processes=2, maxtasksperchild=1) as pool:
        pids = pool.map(pid_of, range(9), chunksize=3)
        groups = [pids[i : i + 3] for i in range(0, 9, 3)]
        assert all(len(set(g)) == 1 for g in groups), pids
        assert len(set(pids)) == 3, pids
        pids = list(pool.imap(pid_of, range(8), chunksize=4))
        assert len(set(pids[:4])) == 1 and len(set(pids[4:])) == 1 and pids[0] != pids[4], pids
    with Pool(processes=2) as pool:
        before = pool._core.calls
        pool.map(square, range(10), chunksize=4)
        assert pool._core.calls - before == 3  # chunks of 4, 4 and 2
        before = pool._core.calls
        pool.map(square, range(16))  # default: about four chunks per process, as the stdlib
        assert pool._core.calls - before == 8


def test_apply_async_callbacks(ray):
    got, errors, done = [], [], threading.Event()
    with Pool(processes=2) as pool:
        r = pool.apply_async(square, (9,), callback=got.append, error_callback=errors.append)
        assert r.get(timeout=30) == 81
        assert got == [81] and errors == []  # the callback ran before get() returned
        assert r.ready() and r.successful()
        m = pool.map_async(square, range(4), callback=lambda v: (got.append(v), done.set()))
        assert done.wait(30) and m.get(timeout=1) == [0, 1, 4, 9]
        assert got[-1] == [0, 1, 4, 9]
        s = pool.starmap_async(add, [(1, 1)], callback=got.append)
        assert s.get(timeout=30) == [2] and got[-1] == [2]


def test_errors_keep_their_class_and_reach_error_callback(ray):
    errors = []
    with Pool(processes=2) as pool:
        r = pool.apply_async(fail_on_three, (3,), callback=errors.append, error_callback=errors.append)
        with pytest.raises(KeyError, match="bad item 3") as info:
            r.get(timeout=30)
        assert type(info.value) is KeyError
        assert "fail_on_three" in str(info.value.__cause__)  # the worker's traceback, as the stdlib's
        assert r.ready() and not r.successful()
        assert len(errors) == 1 and type(errors[0]) is KeyError
        with pytest.raises(KeyError):
            pool.map(fail_on_three, range(6), chunksize=2)
        m = pool.map_async(fail_on_three, range(6), error_callback=errors.append)
        m.wait(30)
        assert not m.successful() and type(errors[-1]) is KeyError
        # imap raises where the failing item is, and goes on after it (chunksize 1).
        it = pool.imap(fail_on_three, range(5))
        assert [it.next(timeout=30) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyError):
            it.next(timeout=30)
        assert list(it) == [4]
        # The pool is still usable.
        assert pool.apply(square, (4,)) == 16


def _bad_input():
    yield 1
    raise OSError("input broke")


def test_not_ready_and_timeouts(ray):
    with Pool(processes=2) as pool:
        r = pool.apply_async(time.sleep, (1.0,))
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        t = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.1)
        assert time.monotonic() - t < 0.8
        r.wait(0.05)
        assert not r.ready()
        it = pool.imap(time.sleep, [1.0])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.1)
        assert r.get(timeout=30) is None and it.next(timeout=30) is None
        # An input that raises: the iterator raises it where it happened.
        it = pool.imap(square, _bad_input())
        assert it.next(timeout=30) == 1
        with pytest.raises(OSError, match="input broke"):
            it.next(timeout=30)


def test_initializer_runs_once_in_each_worker(ray):
    recorder = Recorder.remote()
    with Pool(processes=2, initializer=record_start, initargs=(recorder, "ready")) as pool:
        marks = pool.map(read_mark, range(12), chunksize=1)
        assert {tag for _, tag in marks} == {"ready"}
        used = {pid for pid, _ in marks}
        started = ray.get(recorder.get.remote())
        assert len(started) == 2 and len(set(started)) == 2  # once per process, not per task
        assert used <= set(started)


def test_maxtasksperchild_replaces_the_process(ray):
    recorder = Recorder.remote()
    with Pool(processes=2, maxtasksperchild=2, initializer=record_start, initargs=(recorder, "x")) as pool:
        pids = pool.map(pid_of, range(12), chunksize=1)
        counts = {p: pids.count(p) for p in set(pids)}
        assert all(n <= 2 for n in counts.values()), counts
        assert len(counts) >= 6
        # Every replacement ran the initializer again; the replaced processes are gone.
        assert set(pids) <= set(ray.get(recorder.get.remote()))
        first = pids[0]
        assert wait_for(lambda: not is_running(first))


def test_close_and_join(ray):
    pool = Pool(processes=2)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pids = pids_of_pool(pool)
    pending = pool.map_async(pid_after, [0.5, 0.5, 0.5])
    pool.close()
    pool.close()  # twice is fine
    for call in (
        lambda: pool.apply_async(square, (1,)),
        lambda: pool.map(square, [1]),
        lambda: pool.imap(square, [1]),
        lambda: pool.starmap(add, [(1, 2)]),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    with pytest.raises(ValueError, match="Pool not running"), pool:
        pass
    pool.join()  # waits for the work submitted before close
    assert pending.ready() and set(pending.get()) <= pids
    assert wait_for(lambda: not any(is_running(p) for p in pids)), "closed pool's processes still running"
    pool.terminate()  # after join: nothing left to do, no error


def test_close_waits_for_imap_still_reading_its_input(ray):
    pool = Pool(processes=2)
    it = pool.imap(square, (x for x in range(50) if time.sleep(0.005) is None))
    pool.close()
    pool.join()
    assert list(it) == [x * x for x in range(50)]


def test_terminate_ends_processes_and_fails_what_is_outstanding(ray):
    pool = Pool(processes=2)
    pids = pids_of_pool(pool)
    slow = pool.map_async(time.sleep, [10, 10, 10], chunksize=1)
    errors = []
    queued = pool.apply_async(square, (2,), error_callback=errors.append)
    t = time.monotonic()
    pool.terminate()
    assert time.monotonic() - t < 5
    with pytest.raises(RuntimeError, match="terminated"):
        slow.get(timeout=5)
    with pytest.raises(RuntimeError, match="terminated"):
        queued.get(timeout=5)
    assert len(errors) == 1
    assert wait_for(lambda: not any(is_running(p) for p in pids)), "terminated pool's processes still running"
    pool.join()
    pool.terminate()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))


def test_context_manager_terminates_on_exit(ray):
    with Pool(processes=2) as pool:
        pids = pids_of_pool(pool)
        running = pool.apply_async(time.sleep, (10,))
    assert wait_for(lambda: not any(is_running(p) for p in pids))
    with pytest.raises(RuntimeError, match="terminated"):
        running.get(timeout=5)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


def test_a_forgotten_pool_warns_and_ends_its_processes(ray):
    pool = Pool(processes=2)
    pids = pids_of_pool(pool)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool  # no reference cycle: the pool goes at once
    assert wait_for(lambda: not any(is_running(p) for p in pids))


def test_work_runs_in_parallel(ray):
    with Pool(processes=2) as pool:
        assert len(pids_of_pool(pool)) == 2  # both processes started
        t = time.monotonic()
        assert pool.map(time.sleep, [1, 1, 1, 1], chunksize=1) == [None] * 4
        elapsed = time.monotonic() - t
        assert 2.0 <= elapsed < 3.5, f"4 x 1 s on 2 processes took {elapsed:.2f} s"
        # Work spreads over both processes.
        assert len(set(pool.map(pid_after, [0.1] * 6, chunksize=1))) == 2


def test_pool_arguments(ray):
    with Pool() as pool:  # default: the cluster's CPU count
        assert pool._processes == 2
        assert len(pids_of_pool(pool)) == 2
    with pytest.raises(ValueError, match="at least 1"):
        Pool(processes=0)
    with pytest.raises(ValueError, match="CPUs"):
        Pool(processes=3)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(processes=1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        Pool(processes=1, initializer=42)
    with Pool(processes=1, context=object()) as pool:  # context is accepted and ignored, as in Ray
        with pytest.raises(NotImplementedError):
            pickle.dumps(pool)
        with pytest.raises(ValueError, match="Chunksize"):
            pool.imap(square, [1], chunksize=0)
        assert pool.map(square, [3]) == [9]


@asyncray.remote
def nap(x):
    time.sleep(x / 10)
    return x


def test_as_completed_yields_values_as_they_finish(ray):
    refs = [nap.remote(x) for x in [8, 1]]  # no more tasks than CPUs: both start at once
    assert list(as_completed(refs, chunk_size=1)) == [1, 8]
    refs = [nap.remote(x) for x in range(7)]
    assert sorted(as_completed(refs, chunk_size=3)) == list(range(7))
    refs = [nap.remote(x) for x in [2, 1]]
    out = list(as_completed(refs, yield_obj_refs=True))
    assert all(isinstance(r, asyncray.ObjectRef) for r in out) and ray.get(out) == [2, 1]
    assert list(as_completed([])) == []
    with pytest.raises(ValueError, match="chunk_size"):
        as_completed(refs, chunk_size=0)


def test_map_unordered_bounds_what_is_in_flight(ray):
    pulled = []

    def items():
        for x in [5, 1, 3, 2, 0]:
            pulled.append(x)
            yield x

    out = map_unordered(nap, items(), backpressure_size=2, chunk_size=1)
    first = next(out)
    assert first == 1 and len(pulled) <= 3  # two in flight, the third waits for a slot
    assert sorted([first, *out]) == [0, 1, 2, 3, 5]
    assert sorted(map_unordered(nap, range(12), backpressure_size=None)) == list(range(12))
    refs = list(map_unordered(nap, [1, 2], yield_obj_refs=True))
    assert sorted(ray.get(refs)) == [1, 2]
    with pytest.raises(ValueError, match="backpressure_size"):
        map_unordered(nap, [1], backpressure_size=0)


def test_example_runs():
    out = run_example("multiprocessing_pool.py").stdout
    assert "map: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    assert "imap: [0, 1, 4, 9, 16]" in out
    assert "imap_unordered: [0, 1, 4, 9, 16]" in out
    assert "starmap: [32, 27]" in out
    assert "apply_async: 144" in out
    m = re.search(r"slow map: \[0, 1, 4, 9\] in ([0-9.]+) s", out)
    assert m, out
    assert float(m.group(1)) < 1.9, "four 0.5 s tasks on two or more processes run in parallel"
    assert re.search(r"processes used: ([2-9]|\d\d)", out), out
    assert out.rstrip().endswith("done")
