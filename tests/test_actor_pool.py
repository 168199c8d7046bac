"""asyncray.util.ActorPool: Ray's ActorPool API against a real runtime."""

from __future__ import annotations

import os
import time

import pytest
from conftest import wait_for

import asyncray
from asyncray.exceptions import ActorDiedError
from asyncray.util import ActorPool


@asyncray.remote
class Worker:
    def __init__(self, start=0):
        self.value = start

    def double(self, v):
        return 2 * v

    def increment(self, by):
        self.value += by
        return self.value

    def nap(self, v, seconds):
        time.sleep(seconds)
        return v

    def touch(self, path):
        # A side effect the test can see without reading the pool's iterator.
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        return path

    @asyncray.method(num_returns=2)
    def pair(self, v):
        return v, v * 10

    def fail(self, v):
        raise ValueError(f"bad value {v}")


def double(a, v):
    return a.double.remote(v)


def nap(a, v):
    # v = (value, seconds)
    return a.nap.remote(*v)


def pair(a, v):
    return a.pair.remote(v)


@pytest.fixture
def pool(ray):
    """Two fresh actors in a pool; killed after the test."""
    actors = [Worker.remote(), Worker.remote()]
    # Started before the test: tests that race a slow call against a fast one on the
    # other actor must not count a worker's start-up on a loaded machine.
    asyncray.get([a.double.remote(0) for a in actors])
    yield ActorPool(actors)
    for a in actors:
        asyncray.kill(a)


@pytest.fixture
def one(ray):
    """A single actor, for tests that follow which actor is busy."""
    actor = Worker.remote()
    yield actor
    asyncray.kill(actor)


def test_map_keeps_input_order(pool):
    assert list(pool.map(double, range(8))) == [0, 2, 4, 6, 8, 10, 12, 14]
    # Whichever finishes first, map yields in input order.
    assert list(pool.map(nap, [("slow", 1.0), ("fast", 0.0), ("third", 0.0)])) == ["slow", "fast", "third"]
    assert not pool.has_next()


def test_map_spreads_over_the_actors(ray):
    counters = [Worker.remote(), Worker.remote()]
    pool = ActorPool(counters)
    assert list(pool.map(lambda a, v: a.increment.remote(v), [1, 2, 3, 4])) == [1, 2, 4, 6]
    assert sorted(asyncray.get([c.increment.remote(0) for c in counters])) == [4, 6]
    for c in counters:
        asyncray.kill(c)


def test_map_unordered_yields_in_completion_order(pool):
    got = list(pool.map_unordered(nap, [("slow", 1.5), ("fast", 0.0)]))
    assert got == ["fast", "slow"]
    assert sorted(pool.map_unordered(double, range(6))) == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("method", ["map", "map_unordered"])
def test_map_starts_work_before_the_iterator_is_read(pool, tmp_path, method):
    paths = [str(tmp_path / f"{i}") for i in range(2)]
    results = getattr(pool, method)(lambda a, p: a.touch.remote(p), paths)
    # Nothing has read `results` yet; both actors already ran their call.
    assert wait_for(lambda: all(os.path.exists(p) for p in paths), timeout=30)
    assert sorted(results) == paths


def test_map_drops_results_left_unread(pool):
    pool.submit(double, 100)
    assert list(pool.map(double, [1, 2])) == [2, 4]
    assert not pool.has_next()


def test_submit_and_get_next(pool):
    assert not pool.has_next()
    pool.submit(double, 1)
    pool.submit(double, 2)
    pool.submit(double, 3)  # both actors busy: waits in the pool
    assert pool.has_next()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert not pool.has_next()


def test_get_next_unordered(pool):
    pool.submit(nap, ("slow", 1.5))
    pool.submit(nap, ("fast", 0.0))
    assert pool.get_next_unordered() == "fast"
    assert pool.get_next_unordered() == "slow"
    assert not pool.has_next()


def test_get_next_after_get_next_unordered_takes_the_oldest_left(pool):
    pool.submit(nap, ("slow", 1.0))
    pool.submit(nap, ("fast", 0.0))
    pool.submit(nap, ("third", 0.0))
    assert pool.get_next_unordered() == "fast"
    assert pool.get_next() == "slow"
    assert pool.get_next() == "third"


@pytest.mark.parametrize("method", ["get_next", "get_next_unordered"])
def test_nothing_pending_raises_stop_iteration(pool, method):
    with pytest.raises(StopIteration, match="No more results to get"):
        getattr(pool, method)()
    pool.submit(double, 5)
    assert getattr(pool, method)() == 10
    with pytest.raises(StopIteration, match="No more results to get"):
        getattr(pool, method)(timeout=1)


@pytest.mark.parametrize("method", ["get_next", "get_next_unordered"])
def test_timeout_keeps_the_result(pool, method):
    pool.submit(nap, ("late", 1.5))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="^Timed out waiting for result$"):
        getattr(pool, method)(timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 10
    assert pool.has_next()
    assert getattr(pool, method)(timeout=60) == "late"


@pytest.mark.parametrize("method", ["get_next", "get_next_unordered"])
def test_timeout_with_ignore_moves_past_the_result(pool, method):
    pool.submit(nap, ("ignored", 3.0))
    pool.submit(nap, ("kept", 1.0))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="Timed out waiting for result. The task .* has been ignored."):
        getattr(pool, method)(timeout=0.2, ignore_if_timedout=True)
    assert time.monotonic() - t0 < 10
    assert getattr(pool, method)(timeout=60) == "kept"
    assert not pool.has_next()


def test_several_returns_give_a_list(pool):
    pool.submit(pair, 3)
    assert pool.get_next() == [3, 30]
    pool.submit(pair, 4)
    assert pool.get_next(timeout=60) == [4, 40]
    pool.submit(pair, 5)
    assert pool.get_next_unordered(timeout=60) == [5, 50]
    assert list(pool.map(pair, [1, 2, 3])) == [[1, 10], [2, 20], [3, 30]]
    assert sorted(pool.map_unordered(pair, [1, 2])) == [[1, 10], [2, 20]]


def test_fn_must_return_refs(pool):
    with pytest.raises(TypeError, match="must return an ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    with pytest.raises(TypeError, match="must return an ObjectRef"):
        pool.submit(lambda a, v: [a.double.remote(v), v], 1)
    # The actor was not used: both are still free.
    assert pool.pop_idle() is not None and pool.pop_idle() is not None


def test_a_task_error_reaches_the_caller_and_the_actor_stays(one):
    pool = ActorPool([one])
    pool.submit(lambda a, v: a.fail.remote(v), 7)
    with pytest.raises(ValueError, match="bad value 7"):
        pool.get_next()
    assert pool.has_free()
    assert list(pool.map(double, [1])) == [2]


def test_has_free_pop_idle_and_push(one):
    pool = ActorPool([one])
    assert pool.has_free()
    pool.submit(double, 1)
    assert not pool.has_free()
    assert pool.pop_idle() is None
    pool.submit(double, 2)  # waits for the busy actor
    assert pool.get_next() == 2  # taking the result starts the waiting value
    assert not pool.has_free()
    assert pool.get_next() == 4
    assert pool.has_free()
    assert pool.pop_idle() == one
    assert not pool.has_free() and pool.pop_idle() is None

    pool.submit(double, 3)  # no actor: waits in the pool
    assert not pool.has_next()
    pool.push(one)  # the new actor picks the waiting value up at once
    assert pool.has_next()
    with pytest.raises(ValueError, match="Actor already belongs to current ActorPool"):
        pool.push(one)  # busy
    assert pool.get_next() == 6
    with pytest.raises(ValueError, match="Actor already belongs to current ActorPool"):
        pool.push(one)  # idle


def test_a_dead_actor_leaves_the_pool(ray):
    dead, alive = Worker.remote(), Worker.remote()
    pool = ActorPool([dead, alive])
    asyncray.kill(dead)
    pool.submit(double, 1)  # goes to `dead`, the first idle actor
    pool.submit(double, 2)
    pool.submit(double, 3)  # waits
    with pytest.raises(ActorDiedError):
        pool.get_next()
    assert [pool.get_next(), pool.get_next()] == [4, 6]
    assert pool.pop_idle() == alive
    assert pool.pop_idle() is None  # `dead` never came back
    asyncray.kill(alive)


async def test_amap_from_async_code(pool, tmp_path):
    assert [v async for v in pool.amap(double, [5, 6, 7])] == [10, 12, 14]
    got = [v async for v in pool.amap_unordered(nap, [("slow", 1.5), ("fast", 0.0)])]
    assert got == ["fast", "slow"]
    paths = [str(tmp_path / f"{i}") for i in range(2)]
    results = pool.amap(lambda a, p: a.touch.remote(p), paths)
    assert wait_for(lambda: all(os.path.exists(p) for p in paths), timeout=30)
    assert [p async for p in results] == paths


async def test_async_get_next(pool):
    with pytest.raises(StopAsyncIteration):
        await pool.aget_next()
    with pytest.raises(StopAsyncIteration):
        await pool.aget_next_unordered()
    pool.submit(nap, ("late", 1.5))
    pool.submit(pair, 2)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        await pool.aget_next(timeout=0.2)
    assert await pool.aget_next_unordered(timeout=60) == [2, 20]
    assert await pool.aget_next(timeout=60) == "late"
