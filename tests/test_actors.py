"""Actors: ordering, concurrency, names, lifetimes, kill, restarts, errors."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import pytest
from conftest import is_running, wait_for

import asyncray
from asyncray.exceptions import ActorDiedError


@asyncray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()

    def context(self):
        return asyncray.get_runtime_context().get_actor_id()


@asyncray.remote
def add(a, b):
    return a + b


@asyncray.remote
def slow_value(x, seconds):
    time.sleep(seconds)
    return x


def test_calls_run_in_submission_order(ray):
    c = Counter.remote()
    refs = [c.increment.remote() for _ in range(200)]
    assert ray.get(refs) == list(range(1, 201))


def test_order_holds_when_an_earlier_call_waits_for_its_argument(ray):
    c = Counter.remote()
    late = slow_value.remote(100, 0.5)
    first = c.increment.remote(late)  # waits for its argument
    second = c.increment.remote(1)  # ready at once, but must run after `first`
    assert ray.get([first, second]) == [100, 101]


def test_undecorated_class_and_options(ray):
    class Plain:
        def hello(self):
            return "hi"

    P = asyncray.remote(Plain)
    assert ray.get(P.remote().hello.remote()) == "hi"
    assert ray.get(Counter.options(num_cpus=1).remote(5).get.remote()) == 5


def test_multiple_returns(ray):
    @asyncray.remote
    class Foo:
        @asyncray.method(num_returns=2)
        def bar(self):
            return 1, 2

        def pair(self):
            return 3, 4

    f = Foo.remote()
    a, b = f.bar.remote()
    c, d = f.pair.options(num_returns=2).remote()
    assert ray.get([a, b, c, d]) == [1, 2, 3, 4]


def test_unknown_method_fails_at_the_call_site(ray):
    c = Counter.remote()
    with pytest.raises(AttributeError, match="actor class Counter has no method 'incremnt'"):
        c.incremnt.remote()


def test_different_actors_run_in_parallel(ray):
    @asyncray.remote
    class Sleeper:
        def nap(self, s):
            time.sleep(s)
            return os.getpid()

    a, b = Sleeper.remote(), Sleeper.remote()
    ray.get([a.nap.remote(0), b.nap.remote(0)])
    t = time.monotonic()
    pids = ray.get([a.nap.remote(1.0), b.nap.remote(1.0)])
    assert time.monotonic() - t < 1.8
    assert pids[0] != pids[1]


def test_async_actor_runs_calls_concurrently_and_sync_methods_off_the_loop(ray):
    @asyncray.remote
    class Service:
        def __init__(self):
            self.ticks = 0

        async def tick_for(self, seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.ticks += 1
                await asyncio.sleep(0.01)
            return self.ticks

        async def wait(self, s):
            await asyncio.sleep(s)
            return s

        def blocking(self, s):
            time.sleep(s)
            return threading.current_thread().name

    s = Service.remote()
    t = time.monotonic()
    assert ray.get([s.wait.remote(0.5) for _ in range(50)]) == [0.5] * 50
    assert time.monotonic() - t < 2.0
    ticker = s.tick_for.remote(1.0)
    name = ray.get(s.blocking.remote(0.8))
    ticks = ray.get(ticker)
    assert name != "asyncray-loop"  # not the thread that runs the actor's event loop
    assert ticks > 30, f"the loop stalled while a sync method ran (only {ticks} ticks)"


def test_max_concurrency_limits_async_calls(ray):
    @asyncray.remote(max_concurrency=2)
    class Limited:
        def __init__(self):
            self.now = 0
            self.peak = 0

        async def work(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.05)
            self.now -= 1

        async def peak_seen(self):
            return self.peak

    actor = Limited.remote()
    ray.get([actor.work.remote() for _ in range(10)])
    assert ray.get(actor.peak_seen.remote()) == 2


def test_threaded_actor(ray):
    @asyncray.remote(max_concurrency=4)
    class Threaded:
        def nap(self):
            time.sleep(0.5)
            return threading.get_ident()

    t = Threaded.remote()
    ray.get(t.nap.remote())
    start = time.monotonic()
    idents = ray.get([t.nap.remote() for _ in range(4)])
    assert time.monotonic() - start < 1.5
    assert len(set(idents)) > 1


def test_handles_are_values(ray):
    @asyncray.remote
    class DataTracker:
        def __init__(self):
            self._counts = 0

        def increment(self):
            self._counts += 1

        def counts(self):
            return self._counts

    @asyncray.remote
    def work(item, tracker):
        tracker.increment.remote()
        return item

    tracker = DataTracker.remote()
    assert ray.get([work.remote(i, tracker) for i in range(8)]) == list(range(8))
    assert wait_for(lambda: ray.get(tracker.counts.remote()) == 8, 5)


def test_inside_actor_methods_get_await_nested_and_context_work(ray):
    @asyncray.remote
    class Inner:
        def total(self, n):
            return sum(asyncray.get([add.remote(i, 0) for i in range(n)]))

        async def atotal(self, n):
            return sum(await asyncio.gather(*[add.remote(i, 0) for i in range(n)]))

        def whoami(self):
            return asyncray.get_runtime_context().get_actor_id()

    a = Inner.remote()
    assert ray.get(a.total.remote(10)) == 45
    assert ray.get(a.atotal.remote(10)) == 45
    assert ray.get(a.whoami.remote()) == a.actor_id


def test_named_actors(ray):
    c = Counter.options(name="ticket", namespace="shop").remote(10)
    assert ray.get(ray.get_actor("ticket", namespace="shop").increment.remote()) == 11
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="ticket", namespace="shop").remote()
    again = Counter.options(name="ticket", namespace="shop", get_if_exists=True).remote()
    assert ray.get(again.increment.remote()) == 12
    with pytest.raises(ValueError, match="no live actor named 'nobody'"):
        ray.get_actor("nobody")
    ray.kill(c)
    with pytest.raises(ValueError):
        ray.get_actor("ticket", namespace="shop")


def test_kill_fails_queued_and_later_calls(ray):
    @asyncray.remote
    class Slow:
        def nap(self, s):
            time.sleep(s)
            return s

    a = Slow.remote()
    ray.get(a.nap.remote(0))
    queued = [a.nap.remote(5) for _ in range(3)]
    ray.kill(a)
    for r in queued:
        with pytest.raises(ActorDiedError, match="killed"):
            ray.get(r, timeout=5)
    t = time.monotonic()
    with pytest.raises(ActorDiedError, match="killed by asyncray.kill"):
        ray.get(a.nap.remote(0), timeout=5)
    assert time.monotonic() - t < 1.0


def test_restart_runs_init_again_and_reports_exit_code(ray):
    @asyncray.remote(max_restarts=1)
    class Fragile:
        def __init__(self):
            self.calls = 0

        def bump(self):
            self.calls += 1
            return self.calls, os.getpid()

        def crash(self):
            os._exit(7)

    f = Fragile.remote()
    assert ray.get(f.bump.remote())[0] == 1
    _, pid1 = ray.get(f.bump.remote())
    with pytest.raises(ActorDiedError, match="restarted"):
        ray.get(f.crash.remote(), timeout=20)
    calls, pid2 = ray.get(f.bump.remote(), timeout=20)
    assert calls == 1 and pid2 != pid1  # fresh __init__ in a new process
    with pytest.raises(ActorDiedError, match="exited with code 7, and it is out of restarts"):
        ray.get(f.crash.remote(), timeout=20)
    with pytest.raises(ActorDiedError):
        ray.get(f.bump.remote(), timeout=5)


def test_task_retries_after_restart(ray, tmp_path):
    marker = tmp_path / "crashed"

    @asyncray.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def crash_once(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "second life"

    assert ray.get(Once.remote().crash_once.remote(str(marker)), timeout=20) == "second life"


def test_constructor_error_surfaces_at_first_call(ray):
    @asyncray.remote
    class Broken:
        def __init__(self):
            raise ValueError("no config file")

        def m(self):
            return 1

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="constructor raised") as info:
        ray.get(b.m.remote(), timeout=10)
    assert "no config file" in str(info.value)
    assert isinstance(info.value.cause, ValueError)
    assert "raise ValueError" in info.value.cause.traceback_text


def test_actor_ends_when_its_last_handle_is_dropped(ray):
    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    del c
    assert wait_for(lambda: not is_running(pid), 10)


@asyncray.remote
class HandleKeeper:
    """Holds actor handles it is given (another process than their owner)."""

    def __init__(self):
        self.handles = []

    def keep(self, handles):
        self.handles = list(handles)
        return len(self.handles)

    def call(self):
        return [asyncray.get(h.pid.remote()) for h in self.handles]

    def drop(self):
        self.handles = []
        return True


def test_an_actor_lives_while_a_handle_passed_to_another_process_does(ray):
    """As in Ray: the actor ends when the last handle anywhere is gone, not the owner's last."""
    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    keeper = HandleKeeper.remote()
    assert ray.get(keeper.keep.remote([c])) == 1  # inside a list: the handle is pickled
    del c
    gc.collect()
    time.sleep(1.0)  # the owner's own handle is gone: the borrowed one keeps it alive
    assert ray.get(keeper.call.remote(), timeout=10) == [pid]
    ray.get(keeper.drop.remote())
    assert wait_for(lambda: not is_running(pid), 10)
    ray.kill(keeper)


def test_result_of_a_dropped_handle_still_arrives(ray):
    assert ray.get(Counter.remote(41).increment.remote()) == 42


def test_detached_actor_survives_its_creator_task(ray):
    @asyncray.remote
    def make():
        Counter.options(name="keeper", lifetime="detached").remote(1)
        return "made"

    assert ray.get(make.remote()) == "made"
    keeper = ray.get_actor("keeper")
    assert ray.get(keeper.increment.remote()) == 2
    ray.kill(keeper)
