"""Refs as asyncio futures (as_future, ObjectID, wait_for, gather/wait/as_completed with plain
futures) and cancel() as Ray does it: from any process, recursive, forced, and on actor calls."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest
from conftest import is_running, wait_for

import asyncray
from asyncray import aio
from asyncray import exceptions as exc

# A cancelled task's get must raise well within this (queued tasks, and sync tasks in time.sleep).
PROMPT_S = 1.0


@asyncray.remote
def add(a, b):
    return a + b


@asyncray.remote
def nap(x, seconds):
    time.sleep(seconds)
    return x


@asyncray.remote
def boom():
    raise ValueError("boom")


@asyncray.remote
def marked_nap(x, seconds, mark):
    """Like nap, but first writes this worker's pid to ``mark`` (tests wait for it: it started)."""
    Path(mark).write_text(str(os.getpid()))
    time.sleep(seconds)
    return x


@asyncray.remote
def cancel_from_a_task(refs, **kwargs):
    asyncray.cancel(refs[0], **kwargs)  # in a list, so the ref arrives as a ref (not its value)
    return "sent"


@asyncray.remote
async def cancel_from_an_async_task(refs):
    await aio.cancel(refs[0])
    return "sent"


@asyncray.remote
class Canceller:
    def cancel(self, refs):
        asyncray.cancel(refs[0])
        return "sent"


@asyncray.remote
class Registry:
    """Where a task hands refs it made to the driver (the driver then borrows them)."""

    def __init__(self):
        self.refs = []

    def put(self, refs):
        self.refs.extend(refs)

    def get(self):
        return self.refs


@asyncray.remote
def parent(registry, child_seconds, mark):
    child = marked_nap.remote("child", child_seconds, mark)
    asyncray.get(registry.put.remote([child]))
    return asyncray.get(child)  # blocked here (its CPU lent out) when it is cancelled


@asyncray.remote
class SyncWorker:
    def __init__(self):
        self.log = []

    def work(self, tag, seconds):
        time.sleep(seconds)
        self.log.append(tag)
        return tag

    def history(self):
        return self.log


@asyncray.remote
class AsyncWorker:
    def __init__(self):
        self.cancelled = 0

    async def wait_long(self):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "not cancelled"

    async def seen_cancellations(self):
        return self.cancelled


async def coro(x, seconds=0.05):
    await asyncio.sleep(seconds)
    return x


def started(mark: Path, timeout: float = 20.0) -> int:
    """Wait until a marked task runs; its worker's pid."""
    assert wait_for(lambda: mark.exists() and mark.read_text() != "", timeout), "the task never started"
    return int(mark.read_text())


def handed_out(registry) -> asyncray.ObjectRef:
    """The one ref a ``parent`` task handed to the registry (it may start its child first)."""
    assert wait_for(lambda: asyncray.get(registry.get.remote()) != [], 20), "the parent never handed out its child"
    (child,) = asyncray.get(registry.get.remote())
    return child


def raises_cancelled_within(ref, seconds: float = PROMPT_S) -> float:
    """``get(ref)`` raises TaskCancelledError, within ``seconds``; how long it took."""
    t = time.monotonic()
    with pytest.raises(exc.TaskCancelledError):
        asyncray.get(ref, timeout=30)
    took = time.monotonic() - t
    assert took < seconds, f"get() raised TaskCancelledError only after {took:.2f} s"
    return took


@pytest.fixture(scope="module")
def warm(ray):
    """The module's runtime with both workers started (start-up does not count in timings)."""
    ray.get([nap.remote(0, 0.3), nap.remote(0, 0.3)])
    return ray


# ---------------------------------------------------------------- refs as futures
def test_object_id_is_rays_old_name_for_object_ref(warm):
    assert asyncray.ObjectID is asyncray.ObjectRef
    assert isinstance(asyncray.put(1), asyncray.ObjectID)
    assert "ObjectID" in asyncray.__all__


async def test_as_future_is_an_asyncio_future_on_the_running_loop(warm):
    fut = add.remote(1, 2).as_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is asyncio.get_running_loop()
    assert await fut == 3
    # Cancelling that future stops this wait only: the task goes on (as in Ray).
    ref = nap.remote("kept", 0.3)
    waiting = ref.as_future()
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await ref == "kept"
    assert ref.future().result(timeout=10) == "kept"  # and the concurrent.futures twin


def test_as_future_outside_a_loop_names_the_alternatives(warm):
    with pytest.raises(RuntimeError, match=r"future\(\)"):
        add.remote(1, 1).as_future()


async def test_refs_mix_with_plain_futures_and_coroutines(warm):
    loop = asyncio.get_running_loop()
    plain = loop.create_future()
    loop.call_later(0.05, plain.set_result, "plain")
    assert await asyncio.gather(add.remote(1, 1), coro("c"), plain, add.remote(2, 2).as_future()) == [2, "c", "plain", 4]

    fast, slow = nap.remote("fast", 0.0), nap.remote("slow", 0.6)
    task = asyncio.ensure_future(coro("task", 0.2))
    done, pending = await asyncio.wait([fast, slow, task], return_when=asyncio.FIRST_COMPLETED)
    assert fast in done and slow in pending
    done, pending = await asyncio.wait([slow, task], timeout=10)
    assert done == {slow, task} and not pending and slow.result() == "slow"

    order = [await f for f in asyncio.as_completed([nap.remote("ref", 0.5), coro("coro", 0.05), add.remote(0, 0)])]
    assert order[-1] == "ref" and sorted(map(str, order)) == ["0", "coro", "ref"]

    results = await asyncio.gather(boom.remote(), coro("x"), return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] == "x"


async def test_wait_for_on_a_ref_times_out_at_its_deadline(warm):
    ref = nap.remote(7, 3)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ref, 0.2)
    took = time.monotonic() - t
    assert took < 1.0, f"wait_for(ref, 0.2) returned after {took:.2f} s"
    # The ref is unharmed: the task went on, and every way of reading it gives the value.
    assert await aio.get(ref) == 7
    assert await ref == 7
    assert ref.done() and not ref.cancelled() and ref.result() == 7
    assert await asyncio.wait_for(ref, 0.2) == 7  # done already: no timeout


async def test_wait_for_on_a_gather_of_refs_times_out_at_its_deadline(warm):
    refs = [nap.remote(i, 2) for i in range(2)]
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*refs, coro("c")), 0.2)
    assert time.monotonic() - t < 1.0
    assert await asyncio.gather(*refs) == [0, 1]  # the refs can be gathered again


async def test_a_task_awaiting_a_gather_of_refs_can_be_cancelled(warm):
    ref = nap.remote("late", 2)
    waiter = asyncio.ensure_future(asyncio.gather(ref, coro(1)))
    await asyncio.sleep(0.1)
    t = time.monotonic()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert time.monotonic() - t < 0.5
    assert await ref == "late"


# ---------------------------------------------------------------- cancel: tasks
def test_cancel_of_a_queued_task_is_prompt(warm):
    blockers = [nap.remote(i, 2) for i in range(2)]  # both CPUs busy
    queued = nap.remote("q", 0)
    time.sleep(0.1)
    asyncray.cancel(queued)
    raises_cancelled_within(queued)
    assert asyncray.get(blockers) == [0, 1]


def test_cancel_of_tasks_queued_on_a_busy_worker_is_prompt(warm, tmp_path):
    # Short tasks are pipelined: several wait on one leased worker behind the running one.
    asyncray.get([nap.remote(i, 0) for i in range(20)])
    marks = [tmp_path / f"long{i}" for i in range(2)]
    longs = [marked_nap.remote(i, 30, str(mark)) for i, mark in enumerate(marks)]
    queued = [nap.remote(i, 0) for i in range(6)]
    for mark in marks:
        started(mark)
    for ref in queued:
        asyncray.cancel(ref)
    for ref in queued:
        raises_cancelled_within(ref)
    for ref in longs:
        asyncray.cancel(ref)
        raises_cancelled_within(ref)


def test_cancel_of_a_running_sync_task_in_time_sleep_is_prompt(warm, tmp_path):
    ref = marked_nap.remote("r", 30, str(tmp_path / "mark"))
    started(tmp_path / "mark")
    asyncray.cancel(ref)
    raises_cancelled_within(ref)
    assert asyncray.get([add.remote(i, 1) for i in range(4)]) == [1, 2, 3, 4]  # the workers are fine


def test_cancel_twice_and_after_the_end_changes_nothing(warm, tmp_path):
    done = add.remote(2, 3)
    assert asyncray.get(done) == 5
    asyncray.cancel(done)
    asyncray.cancel(done)
    assert asyncray.get(done) == 5
    assert asyncray.get(cancel_from_a_task.remote([done])) == "sent"  # from elsewhere too
    assert asyncray.get(done) == 5

    ref = marked_nap.remote("r", 30, str(tmp_path / "mark"))
    started(tmp_path / "mark")
    for _ in range(3):
        asyncray.cancel(ref)
    raises_cancelled_within(ref)
    asyncray.cancel(ref)
    assert asyncray.get([add.remote(i, i) for i in range(6)]) == [0, 2, 4, 6, 8, 10]


def test_cancel_from_inside_another_task_reaches_the_owner(warm, tmp_path):
    ref = marked_nap.remote("r", 30, str(tmp_path / "mark"))
    started(tmp_path / "mark")
    t = time.monotonic()
    assert asyncray.get(cancel_from_a_task.remote([ref])) == "sent"
    raises_cancelled_within(ref, PROMPT_S + (time.monotonic() - t))


def test_cancel_from_an_async_task_and_from_an_actor(warm, tmp_path):
    ref = marked_nap.remote("r", 30, str(tmp_path / "a"))
    started(tmp_path / "a")
    assert asyncray.get(cancel_from_an_async_task.remote([ref])) == "sent"
    raises_cancelled_within(ref, 3)

    canceller = Canceller.remote()
    queued_behind = [nap.remote(i, 2) for i in range(2)]
    queued = nap.remote("q", 0)
    assert asyncray.get(canceller.cancel.remote([queued])) == "sent"
    raises_cancelled_within(queued, 3)
    assert asyncray.get(queued_behind) == [0, 1]


def test_recursive_cancel_cancels_the_tasks_it_submitted(warm, tmp_path):
    registry = Registry.remote()
    top = parent.remote(registry, 30, str(tmp_path / "child"))
    started(tmp_path / "child")
    child = handed_out(registry)
    asyncray.cancel(top)  # recursive=True is the default, as in Ray
    raises_cancelled_within(top)
    raises_cancelled_within(child)


def test_non_recursive_cancel_leaves_the_children_running(warm, tmp_path):
    registry = Registry.remote()
    top = parent.remote(registry, 1.5, str(tmp_path / "child"))
    started(tmp_path / "child")
    child = handed_out(registry)
    asyncray.cancel(top, recursive=False)
    raises_cancelled_within(top)
    assert asyncray.get(child, timeout=10) == "child"


def test_recursive_cancel_from_another_process(warm, tmp_path):
    registry = Registry.remote()
    top = parent.remote(registry, 30, str(tmp_path / "child"))
    started(tmp_path / "child")
    child = handed_out(registry)
    assert asyncray.get(cancel_from_a_task.remote([top])) == "sent"
    raises_cancelled_within(top, 3)
    raises_cancelled_within(child, 3)


def test_force_cancel_ends_the_worker_process(warm, tmp_path):
    ref = marked_nap.remote("r", 30, str(tmp_path / "mark"))
    pid = started(tmp_path / "mark")
    asyncray.cancel(ref, force=True)
    with pytest.raises(exc.TaskCancelledError):
        asyncray.get(ref, timeout=10)
    assert wait_for(lambda: not is_running(pid), 5), "force=True left the worker running"
    assert asyncray.get(add.remote(1, 1)) == 2


def test_force_cancel_of_a_queued_task_kills_nobody(warm, tmp_path):
    marks = [tmp_path / f"blocker{i}" for i in range(2)]
    blockers = [marked_nap.remote(i, 1, str(mark)) for i, mark in enumerate(marks)]
    workers = [psutil.Process(started(mark)) for mark in marks]
    queued = nap.remote("q", 0)
    asyncray.cancel(queued, force=True)  # pending: it is cancelled and never runs, as in Ray
    raises_cancelled_within(queued)
    assert asyncray.get(blockers) == [0, 1]
    assert all(is_running(w) for w in workers)


def test_cancel_rejects_what_is_not_a_ref(warm):
    with pytest.raises(TypeError, match="ObjectRef"):
        asyncray.cancel("not a ref")


# ---------------------------------------------------------------- cancel: actor calls
def test_cancel_of_a_queued_sync_actor_call_is_prompt_and_it_never_runs(warm):
    worker = SyncWorker.remote()
    first = worker.work.remote("a", 1.0)
    second = worker.work.remote("b", 0)
    time.sleep(0.2)
    asyncray.cancel(second)
    raises_cancelled_within(second, 0.6)
    assert asyncray.get(first) == "a"
    assert asyncray.get(worker.history.remote()) == ["a"]


def test_a_running_sync_actor_call_is_not_interrupted(warm):
    worker = SyncWorker.remote()
    running = worker.work.remote("a", 0.8)
    time.sleep(0.3)
    asyncray.cancel(running)  # as in Ray: actors have state, a running sync call finishes
    assert asyncray.get(running, timeout=10) == "a"
    assert asyncray.get(worker.work.remote("b", 0)) == "b"
    assert asyncray.get(worker.history.remote()) == ["a", "b"]


def test_cancel_of_a_running_async_actor_call_cancels_its_coroutine(warm):
    worker = AsyncWorker.remote()
    call = worker.wait_long.remote()
    assert asyncray.get(worker.seen_cancellations.remote()) == 0  # the actor is up, the call runs
    time.sleep(0.1)
    asyncray.cancel(call)
    raises_cancelled_within(call)
    assert asyncray.get(worker.seen_cancellations.remote()) == 1  # the coroutine saw CancelledError


def test_force_cancel_of_an_actor_call_is_refused(warm):
    worker = SyncWorker.remote()
    call = worker.work.remote("a", 0.5)
    with pytest.raises(ValueError, match="kill"):
        asyncray.cancel(call, force=True)
    assert asyncray.get(call) == "a"


def test_cancel_of_a_borrowed_ref_goes_to_its_owner(warm, tmp_path):
    registry = Registry.remote()
    top = parent.remote(registry, 30, str(tmp_path / "child"))
    started(tmp_path / "child")
    child = handed_out(registry)  # owned by the worker running ``parent``
    asyncray.cancel(child)
    raises_cancelled_within(child)
    with pytest.raises(exc.TaskCancelledError):  # the parent's own get(child) raised it
        asyncray.get(top, timeout=10)
