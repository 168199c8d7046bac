"""asyncray.util.queue.Queue: Ray's whole Queue API against a real runtime."""

from __future__ import annotations

import asyncio
import queue as stdlib_queue
import time
from collections.abc import Iterator

import pytest
from conftest import wait_for

import asyncray
from asyncray.exceptions import ActorDiedError
from asyncray.util.queue import Empty, Full, Queue

# A custom resource only the queue actor of one test asks for.
SLOT = "queue_slot"


@pytest.fixture(scope="module")
def ray() -> Iterator[object]:
    """The module's runtime: 2 CPUs and one ``queue_slot`` for the actor_options test."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    asyncray.init(num_cpus=2, resources={SLOT: 1})
    yield asyncray
    asyncray.shutdown()


@pytest.fixture
def q(ray) -> Iterator[Queue]:
    """An unbounded queue, shut down after the test."""
    queue = Queue()
    yield queue
    queue.shutdown(force=True)


@pytest.fixture
def q2(ray) -> Iterator[Queue]:
    """A queue of at most two items."""
    queue = Queue(maxsize=2)
    yield queue
    queue.shutdown(force=True)


@asyncray.remote
def put_all(queue, items, delay=0.0):
    time.sleep(delay)
    for item in items:
        queue.put(item)
    return len(items)


@asyncray.remote
def get_n(queue, n, timeout=30.0):
    return [queue.get(timeout=timeout) for _ in range(n)]


@asyncray.remote
class QueueUser:
    def __init__(self, queue):
        self.queue = queue

    def put(self, item):
        self.queue.put(item)

    def get(self, timeout):
        return self.queue.get(timeout=timeout)

    async def get_async(self, timeout):
        return await self.queue.get_async(timeout=timeout)


def test_errors_subclass_the_standard_librarys():
    assert issubclass(Empty, stdlib_queue.Empty)
    assert issubclass(Full, stdlib_queue.Full)


def test_fifo_and_sizes(q):
    assert q.empty() and not q.full()
    assert q.size() == q.qsize() == len(q) == 0
    for i in range(10):
        q.put(i)
    assert q.size() == q.qsize() == len(q) == 10
    assert not q.empty() and not q.full()  # maxsize 0: never full
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()


def test_any_picklable_item(q):
    items = [None, b"\x00bytes", {"k": [1, 2]}, ("t", 1.5), "x" * 200_000]
    for item in items:
        q.put(item)
    assert [q.get() for _ in items] == items


def test_bounded_queue_nowait(q2):
    q2.put_nowait("a")
    q2.put("b", block=False)
    assert q2.full() and len(q2) == 2
    with pytest.raises(Full):
        q2.put_nowait("c")
    with pytest.raises(stdlib_queue.Full):  # Ray's Full is the standard library's too
        q2.put("c", block=False)
    assert q2.get_nowait() == "a"
    assert q2.get(block=False) == "b"
    with pytest.raises(Empty):
        q2.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q2.get(block=False)
    assert q2.empty()


def test_blocking_timeouts_are_bounded(q2):
    t0 = time.monotonic()
    with pytest.raises(Empty, match="empty"):
        q2.get(timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 10
    q2.put_nowait_batch([1, 2])
    t0 = time.monotonic()
    with pytest.raises(Full, match="full"):
        q2.put(3, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 10
    # A timeout of 0 does not wait but still takes what is there.
    assert q2.get(timeout=0) == 1
    assert q2.size() == 1


def test_negative_timeout_is_refused(q):
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-0.5)
    assert q.empty()


def test_put_nowait_batch_all_or_nothing(ray):
    q = Queue(maxsize=3)
    try:
        q.put_nowait_batch(x for x in ("a", "b"))  # any iterable
        with pytest.raises(Full, match="cannot add 2 items"):
            q.put_nowait_batch(["c", "d"])
        assert q.size() == 2  # nothing of the failed batch went in
        q.put_nowait_batch(["c"])
        assert q.full()
        q.put_nowait_batch([])  # an empty batch fits even a full queue
        with pytest.raises(TypeError, match="iterable"):
            q.put_nowait_batch(5)
        assert q.get_nowait_batch(3) == ["a", "b", "c"]
    finally:
        q.shutdown()


def test_get_nowait_batch(q):
    q.put_nowait_batch(range(5))
    assert q.get_nowait_batch(2) == [0, 1]
    with pytest.raises(Empty, match="cannot get 4 items"):
        q.get_nowait_batch(4)
    assert q.size() == 3  # nothing was removed
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(3) == [2, 3, 4]
    with pytest.raises(Empty):
        q.get_nowait_batch(1)


@pytest.mark.parametrize("bad", ["2", 2.0, None, True])
def test_get_nowait_batch_needs_an_int(q, bad):
    with pytest.raises(TypeError, match="must be an int"):
        q.get_nowait_batch(bad)


def test_get_nowait_batch_refuses_negative(q):
    q.put(1)
    with pytest.raises(ValueError, match=">= 0"):
        q.get_nowait_batch(-1)
    assert q.size() == 1


def test_maxsize_must_be_an_int(ray):
    with pytest.raises(TypeError, match="maxsize"):
        Queue(maxsize="3")


def test_blocked_get_wakes_on_a_put_from_a_task(q):
    t0 = time.monotonic()
    ref = put_all.remote(q, ["late"], delay=0.5)
    assert q.get(timeout=60) == "late"
    assert time.monotonic() - t0 < 30
    assert asyncray.get(ref) == 1


def test_blocked_get_in_a_task_wakes_on_a_put_from_the_driver(q):
    ref = get_n.remote(q, 2)
    time.sleep(0.3)  # let the task block first (not needed for correctness)
    q.put("x")
    q.put("y")
    assert asyncray.get(ref, timeout=60) == ["x", "y"]


def test_blocked_put_wakes_when_room_is_made(q2):
    q2.put_nowait_batch(["a", "b"])
    ref = put_all.remote(q2, ["c", "d"])
    assert not asyncray.wait([ref], timeout=0.3)[0]  # the task waits for room
    assert [q2.get(timeout=30) for _ in range(4)] == ["a", "b", "c", "d"]
    assert asyncray.get(ref, timeout=60) == 2


def test_one_producers_items_stay_in_order(q):
    # Two producers interleave, but each one's items come out in the order it put them.
    a = put_all.remote(q, [("a", i) for i in range(30)])
    b = put_all.remote(q, [("b", i) for i in range(30)])
    got = asyncray.get(get_n.remote(q, 60), timeout=120)
    assert asyncray.get([a, b]) == [30, 30]
    assert [i for tag, i in got if tag == "a"] == list(range(30))
    assert [i for tag, i in got if tag == "b"] == list(range(30))


def test_a_task_sees_the_same_queue(q):
    @asyncray.remote
    def inspect(queue):
        queue.put_nowait_batch([1, 2, 3])
        return len(queue), queue.size(), queue.empty(), queue.get_nowait_batch(2)

    assert asyncray.get(inspect.remote(q)) == (3, 3, False, [1, 2])
    assert q.get_nowait() == 3


def test_an_actor_can_use_the_queue(q):
    user = QueueUser.remote(q)
    asyncray.get(user.put.remote("from actor"))
    assert q.get(timeout=30) == "from actor"
    q.put("to actor")
    assert asyncray.get(user.get.remote(30)) == "to actor"
    q.put("to async actor")
    assert asyncray.get(user.get_async.remote(30)) == "to async actor"
    with pytest.raises(Empty):
        asyncray.get(user.get.remote(0.1))
    asyncray.kill(user)


async def test_async_put_and_get(ray):
    q = Queue(maxsize=1)
    try:
        await q.put_async("a")
        with pytest.raises(Full):
            await q.put_async("b", block=False)
        t0 = time.monotonic()
        with pytest.raises(Full):
            await q.put_async("b", timeout=0.2)
        assert 0.15 <= time.monotonic() - t0 < 10
        assert await q.get_async(timeout=5) == "a"
        with pytest.raises(Empty):
            await q.get_async(block=False)
        t0 = time.monotonic()
        with pytest.raises(Empty):
            await q.get_async(timeout=0.2)
        assert 0.15 <= time.monotonic() - t0 < 10
        with pytest.raises(ValueError, match="non-negative"):
            await q.get_async(timeout=-1)
    finally:
        q.shutdown()


async def test_async_get_wakes_on_a_put(ray):
    q = Queue()
    try:
        getter = asyncio.ensure_future(q.get_async(timeout=60))
        await asyncio.sleep(0.2)
        assert not getter.done()
        await q.put_async("woken")
        assert await asyncio.wait_for(getter, 30) == "woken"
    finally:
        q.shutdown()


async def test_a_cancelled_async_get_does_not_swallow_an_item(ray):
    q = Queue()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(q.get_async(), 0.3)
        await q.put_async("kept")
        await asyncio.sleep(0.3)  # a getter that was not withdrawn would take it now
        assert await q.get_async(timeout=10) == "kept"
    finally:
        q.shutdown()


def test_actor_options_reach_the_queue_actor(ray):
    assert asyncray.available_resources().get(SLOT) == 1
    q = Queue(actor_options={"num_cpus": 0, "resources": {SLOT: 1}})
    q.put(1)
    assert q.get() == 1
    assert wait_for(lambda: asyncray.available_resources().get(SLOT, 0) == 0)
    q.shutdown()
    # Shutting down frees what the actor reserved.
    assert wait_for(lambda: asyncray.available_resources().get(SLOT) == 1)


def test_bad_actor_options_are_refused(ray):
    with pytest.raises(ValueError, match="unknown option"):
        Queue(actor_options={"no_such_option": 1})


@pytest.mark.parametrize("force", [False, True])
def test_shutdown_ends_the_actor_once(ray, force):
    q = Queue()
    q.put("dropped")
    actor = q.actor
    t0 = time.monotonic()
    q.shutdown(force=force, grace_period_s=5)
    assert time.monotonic() - t0 < 10
    assert q.actor is None  # as in Ray: the queue lets go of its actor
    # The actor is gone: a call straight to it fails.
    with pytest.raises(ActorDiedError):
        asyncray.get(actor.empty.remote(), timeout=30)
    q.shutdown()  # again: does nothing
    q.shutdown(force=True)
    for use in (q.size, q.empty, lambda: q.put(1), q.get_nowait, lambda: q.get_nowait_batch(1)):
        with pytest.raises(RuntimeError, match="shut down"):
            use()


def test_a_blocked_getter_fails_when_the_queue_is_shut_down(ray):
    q = Queue()
    ref = get_n.remote(q, 1, None)  # blocks with no timeout
    assert not asyncray.wait([ref], timeout=0.3)[0]
    q.shutdown(grace_period_s=1)
    # The task's get() ends with the actor instead of hanging.
    with pytest.raises(ActorDiedError):
        asyncray.get(ref, timeout=60)
