"""Ray's actor semantics (issue 14): class attributes, exit_actor, concurrency groups, async actors.

Some behaviours need the caller's side to send a new option (``concurrency_groups``,
``concurrency_group`` per call, ``sync_methods_on_loop``, ``__ray_terminate__`` on a handle,
``ClassName.X`` through the actor class); until it does, their tests skip, saying what is missing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, ClassVar

import pytest
from conftest import is_running, wait_for

import asyncray
import asyncray.actor
from asyncray._actor.handle import ActorClass
from asyncray._client import options as _options
from asyncray._wire import messages as m
from asyncray.exceptions import ActorDiedError
from asyncray.util import state

# ---------------------------------------------------------------- what the caller's side sends yet


def _sends_concurrency_groups() -> bool:
    return (
        "concurrency_groups" in _options.ACTOR_OPTIONS
        and "concurrency_groups" in m.CreateActor.__dataclass_fields__
        and "concurrency_group" in m.PushTask.__dataclass_fields__
    )


needs_groups = pytest.mark.skipif(
    not _sends_concurrency_groups(),
    reason="needs @remote(concurrency_groups=...) sent to the actor (options, handle, messages, head: issue 14)",
)
needs_sync_on_loop = pytest.mark.skipif(
    "sync_methods_on_loop" not in _options.ACTOR_OPTIONS
    or "sync_methods_on_loop" not in m.CreateActor.__dataclass_fields__,
    reason="needs the actor option sync_methods_on_loop sent to the actor (options, handle, messages, head: issue 14)",
)
needs_class_forwarding = pytest.mark.skipif(
    "__getattr__" not in vars(ActorClass),
    reason="needs ActorClass to forward class attributes to the class (handle.py: issue 14)",
)


def _terminate(handle: Any) -> Any:
    try:
        method = handle.__ray_terminate__
    except AttributeError:
        pytest.skip("needs ActorHandle.__ray_terminate__ (handle.py: issue 14)")
    return method.remote()


def _actor_entry(handle: Any) -> dict[str, Any]:
    return next(a for a in state.list_actors() if a["actor_id"] == handle.actor_id)


# ---------------------------------------------------------------- class attributes


class GrandBase:
    GRAND = "grand"
    SHARED = "from grandparent"

    @staticmethod
    def helper() -> str:
        return "static helper"

    @classmethod
    def which(cls) -> str:
        return cls.__name__


class Base(GrandBase):
    BASE = "base"
    SHARED = "from parent"


@asyncray.remote
class WithAttributes(Base):
    LIMIT = 3
    TABLE: ClassVar[dict[str, int]] = {"a": 1}

    def via_self(self) -> tuple[Any, ...]:
        return self.LIMIT, self.TABLE["a"], self.BASE, self.GRAND, self.SHARED, self.helper(), self.which()

    def via_type(self) -> tuple[Any, ...]:
        cls = type(self)
        return cls.LIMIT, cls.BASE, cls.GRAND, cls.SHARED, cls.helper(), cls.which()

    def via_bases(self) -> tuple[Any, ...]:
        return Base.BASE, GrandBase.GRAND, GrandBase.helper()

    def via_class_name(self) -> tuple[Any, ...]:
        return WithAttributes.LIMIT, WithAttributes.GRAND, WithAttributes.helper()

    async def async_via_self(self) -> tuple[Any, ...]:
        return self.LIMIT, type(self).GRAND, self.helper()


def test_class_and_inherited_attributes_inside_methods(ray):
    a = WithAttributes.remote()
    assert ray.get(a.via_self.remote()) == (3, 1, "base", "grand", "from parent", "static helper", "WithAttributes")
    assert ray.get(a.via_type.remote()) == (3, "base", "grand", "from parent", "static helper", "WithAttributes")
    assert ray.get(a.via_bases.remote()) == ("base", "grand", "static helper")
    assert ray.get(a.async_via_self.remote()) == (3, "grand", "static helper")


@needs_class_forwarding
def test_class_attributes_through_the_decorated_class_name(ray):
    # Inside a method the global name is the actor class (the decorated object), as in Ray.
    a = WithAttributes.remote()
    assert ray.get(a.via_class_name.remote()) == (3, "grand", "static helper")
    assert WithAttributes.LIMIT == 3 and WithAttributes.helper() == "static helper"


# ---------------------------------------------------------------- exit_actor


class Exits:
    """An actor that records its atexit handler in a file and can exit three ways."""

    def __init__(self, marker: str) -> None:
        import atexit

        self.calls = 0

        def note() -> None:
            with open(marker, "a") as f:
                f.write("atexit ran\n")

        atexit.register(note)

    def pid(self) -> int:
        return os.getpid()

    def bump(self) -> int:
        self.calls += 1
        return self.calls

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "finished"

    def leave(self) -> str:
        asyncray.actor.exit_actor()
        return "not reached"


class AsyncExits(Exits):
    async def aslow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finished"

    async def abump(self) -> int:
        return self.bump()

    async def aleave(self) -> str:
        await asyncio.sleep(0)
        asyncray.actor.exit_actor()
        return "not reached"

    async def leave_in_background(self) -> str:
        async def later() -> None:
            await asyncio.sleep(0.05)
            asyncray.actor.exit_actor()  # swallowed by the task: the actor still exits

        self._bg = asyncio.get_running_loop().create_task(later())
        return "scheduled"


def _assert_exited(ray: Any, handle: Any, marker: Any, pid: int) -> None:
    """The actor's process is gone after running atexit, the head says DEAD by exit_actor, no restart."""
    assert wait_for(lambda: not is_running(pid), 15), "the actor's process did not exit"
    assert marker.read_text() == "atexit ran\n"
    entry = _actor_entry(handle)
    assert entry["state"] == "DEAD" and "exit_actor" in entry["death_cause"], entry
    assert entry["num_restarts"] == 0  # max_restarts=2, yet an intended exit is not restarted
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(handle.bump.remote(), timeout=10)


@pytest.mark.parametrize("kind", ["sync", "threaded", "async-sync-method", "async"])
def test_exit_actor_ends_the_actor_gracefully(ray, tmp_path, kind):
    marker = tmp_path / "marker"
    marker.touch()
    if kind == "sync":
        a = asyncray.remote(max_restarts=2)(Exits).remote(str(marker))
    elif kind == "threaded":
        a = asyncray.remote(max_restarts=2, max_concurrency=4)(Exits).remote(str(marker))
    else:  # one call at a time, so that the calls behind the exiting one wait for their turn
        a = asyncray.remote(max_restarts=2, max_concurrency=1)(AsyncExits).remote(str(marker))
    pid = ray.get(a.pid.remote())
    assert ray.get(a.bump.remote()) == 1
    if kind == "async":
        exiting, queued = a.aleave.remote(), [a.abump.remote() for _ in range(3)]
    else:
        exiting, queued = a.leave.remote(), [a.bump.remote() for _ in range(3)]
    with pytest.raises(ActorDiedError, match="exited via exit_actor"):
        ray.get(exiting, timeout=15)
    for ref in queued:
        with pytest.raises(ActorDiedError, match="exit_actor"):
            ray.get(ref, timeout=15)
    _assert_exited(ray, a, marker, pid)


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_calls_running_when_a_concurrent_actor_exits_finish(ray, tmp_path, kind):
    marker = tmp_path / "marker"
    marker.touch()
    if kind == "threaded":
        a = asyncray.remote(max_concurrency=4)(Exits).remote(str(marker))
        running, leave = a.slow.remote(0.8), a.leave
    else:
        a = asyncray.remote(AsyncExits).remote(str(marker))
        running, leave = a.aslow.remote(0.8), a.aleave
    pid = ray.get(a.pid.remote())
    time.sleep(0.2)  # the slow call is running
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(leave.remote(), timeout=15)
    assert ray.get(running, timeout=15) == "finished"
    _assert_exited(ray, a, marker, pid)


def test_exit_actor_from_a_background_task_of_an_async_actor(ray, tmp_path):
    marker = tmp_path / "marker"
    marker.touch()
    a = asyncray.remote(AsyncExits).remote(str(marker))
    pid = ray.get(a.pid.remote())
    assert ray.get(a.leave_in_background.remote()) == "scheduled"
    _assert_exited(ray, a, marker, pid)


def test_exit_actor_outside_an_actor_is_a_type_error(ray):
    with pytest.raises(TypeError, match="inside an actor"):
        asyncray.actor.exit_actor()

    @asyncray.remote
    def task() -> str:
        try:
            asyncray.actor.exit_actor()
        except TypeError as exc:
            return str(exc)
        return "no error"

    assert "inside an actor" in ray.get(task.remote())


def test_ray_terminate_is_queued_behind_earlier_calls(ray, tmp_path):
    marker = tmp_path / "marker"
    marker.touch()
    a = asyncray.remote(max_restarts=1)(Exits).remote(str(marker))
    pid = ray.get(a.pid.remote())
    earlier = [a.slow.remote(0.3), a.bump.remote(), a.bump.remote()]
    terminated = _terminate(a)
    later = a.bump.remote()
    assert ray.get(earlier, timeout=15) == ["finished", 1, 2]
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(terminated, timeout=15)
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(later, timeout=15)
    _assert_exited(ray, a, marker, pid)


def test_ray_terminate_of_an_async_actor(ray, tmp_path):
    marker = tmp_path / "marker"
    marker.touch()
    a = asyncray.remote(AsyncExits).remote(str(marker))
    pid = ray.get(a.pid.remote())
    running = a.aslow.remote(0.5)
    terminated = _terminate(a)
    assert ray.get(running, timeout=15) == "finished"
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(terminated, timeout=15)
    _assert_exited(ray, a, marker, pid)


# ---------------------------------------------------------------- concurrency groups


class Peaks:
    """Counts how many calls of each group run at once."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.lock = threading.Lock()

    def enter(self, group: str) -> None:
        with self.lock:
            self.now[group] = self.now.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.now[group])

    def leave(self, group: str) -> None:
        with self.lock:
            self.now[group] -= 1


if _sends_concurrency_groups():

    @asyncray.remote(concurrency_groups={"io": 2, "compute": 4}, max_concurrency=3)
    class AsyncGroups:
        def __init__(self) -> None:
            self.peaks = Peaks()

        async def _work(self, group: str, seconds: float) -> str:
            self.peaks.enter(group)
            try:
                await asyncio.sleep(seconds)
            finally:
                self.peaks.leave(group)
            return group

        @asyncray.method(concurrency_group="io")
        async def io(self, seconds: float, label: str = "io") -> str:
            return await self._work(label, seconds)

        @asyncray.method(concurrency_group="compute")
        async def compute(self, seconds: float) -> str:
            return await self._work("compute", seconds)

        async def plain(self, seconds: float) -> str:
            return await self._work("default", seconds)

        @asyncray.method(concurrency_group="io")
        async def leave(self) -> None:
            asyncray.actor.exit_actor()

        def peak(self) -> dict[str, int]:
            return self.peaks.peak

    @asyncray.remote(concurrency_groups={"io": 2, "compute": 3})
    class ThreadedGroups:
        def __init__(self) -> None:
            self.peaks = Peaks()
            self.threads: dict[str, set[str]] = {}

        def _work(self, group: str, seconds: float) -> str:
            self.peaks.enter(group)
            self.threads.setdefault(group, set()).add(threading.current_thread().name)
            try:
                time.sleep(seconds)
            finally:
                self.peaks.leave(group)
            return group

        @asyncray.method(concurrency_group="io")
        def io(self, seconds: float, label: str = "io") -> str:
            return self._work(label, seconds)

        @asyncray.method(concurrency_group="compute")
        def compute(self, seconds: float) -> str:
            return self._work("compute", seconds)

        def plain(self, seconds: float) -> str:
            return self._work("default", seconds)

        @asyncray.method(concurrency_group="compute")
        def leave(self) -> None:
            asyncray.actor.exit_actor()

        def seen(self) -> tuple[dict[str, int], dict[str, list[str]]]:
            return self.peaks.peak, {k: sorted(v) for k, v in self.threads.items()}


@needs_groups
def test_async_actor_concurrency_groups_limit_each_group(ray):
    a = AsyncGroups.remote()
    refs = [a.io.remote(0.2) for _ in range(6)] + [a.compute.remote(0.2) for _ in range(8)]
    refs += [a.plain.remote(0.2) for _ in range(6)]
    # .options(concurrency_group=...) moves one call of an io method into the compute group.
    refs += [a.io.options(concurrency_group="compute").remote(0.2, "io-in-compute") for _ in range(2)]
    ray.get(refs, timeout=30)
    peak = ray.get(a.peak.remote())
    assert peak["io"] == 2 and peak["compute"] == 4 and peak["default"] == 3, peak
    assert peak["io-in-compute"] >= 1


@needs_groups
def test_threaded_actor_groups_have_thread_pools_of_their_own(ray):
    a = ThreadedGroups.remote()
    refs = [a.io.remote(0.2) for _ in range(5)] + [a.compute.remote(0.2) for _ in range(6)]
    refs += [a.plain.remote(0.05) for _ in range(3)]
    ray.get(refs, timeout=30)
    peak, threads = ray.get(a.seen.remote())
    assert peak == {"io": 2, "compute": 3, "default": 1}, peak
    assert threads["default"] == ["MainThread"]  # max_concurrency=1: the default group runs in order
    assert not set(threads["io"]) & set(threads["compute"]), threads


@needs_groups
def test_unknown_concurrency_group_fails_the_call_or_the_actor(ray):
    a = AsyncGroups.remote()
    with pytest.raises(ValueError, match="no concurrency group 'nope'"):
        ray.get(a.io.options(concurrency_group="nope").remote(0), timeout=10)

    @asyncray.remote(concurrency_groups={"io": 1})
    class Undeclared:
        @asyncray.method(concurrency_group="elsewhere")
        async def m(self) -> None:
            pass

    with pytest.raises(ActorDiedError, match="elsewhere"):
        ray.get(Undeclared.remote().m.remote(), timeout=10)


@needs_groups
@pytest.mark.parametrize("cls_name", ["AsyncGroups", "ThreadedGroups"])
def test_exit_actor_inside_a_concurrency_group(ray, cls_name):
    a = globals()[cls_name].remote()
    ray.get(a.plain.remote(0))
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(a.leave.remote(), timeout=15)
    assert wait_for(lambda: _actor_entry(a)["state"] == "DEAD", 15)
    assert "exit_actor" in _actor_entry(a)["death_cause"]


# ---------------------------------------------------------------- async actors


@asyncray.remote
class LoopThreads:
    async def loop_thread(self) -> int:
        return threading.get_ident()

    def sync_thread(self) -> int:
        return threading.get_ident()


def test_sync_methods_of_async_actors_run_off_the_loop_by_default(ray):
    a = LoopThreads.remote()
    assert ray.get(a.sync_thread.remote()) != ray.get(a.loop_thread.remote())


@needs_sync_on_loop
def test_sync_methods_on_loop_is_rays_way(ray):
    a = LoopThreads.options(sync_methods_on_loop=True).remote()
    assert ray.get(a.sync_thread.remote()) == ray.get(a.loop_thread.remote())


@asyncray.remote
def double(x: int) -> int:
    return 2 * x


@asyncray.remote
def slow_double(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return 2 * x


@asyncray.remote
class AwaitsTwice:
    async def own_ref(self) -> int:
        ref = slow_double.remote(1, 0.2)
        x = await ref
        y = await ref
        return x + y

    async def put_ref(self) -> int:
        ref = asyncray.put(5)
        x = await ref
        y = await ref
        return x + y

    async def borrowed(self, refs: list[Any]) -> int:
        ref = refs[0]
        x = await ref
        y = await ref
        return x + y

    async def gathered(self) -> list[int]:
        ref = double.remote(4)
        return list(await asyncio.gather(ref, ref, asyncio.wait_for(ref, 10)))


@pytest.mark.timeout(20)
def test_awaiting_the_same_ref_twice_in_an_async_actor(ray):
    a = AwaitsTwice.remote()
    assert ray.get(a.own_ref.remote(), timeout=10) == 4
    assert ray.get(a.put_ref.remote(), timeout=10) == 10
    assert ray.get(a.borrowed.remote([slow_double.remote(3, 0.2)]), timeout=10) == 12
    assert ray.get(a.borrowed.remote([asyncray.put(7)]), timeout=10) == 14
    assert ray.get(a.gathered.remote(), timeout=10) == [8, 8, 8]


class CustomError(Exception):
    """Defined in the test module: shipped by value, with a constructor of its own."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@asyncray.remote
class Raises:
    async def async_custom(self) -> None:
        await asyncio.sleep(0)
        raise CustomError(7, "async method")

    async def async_builtin(self) -> None:
        raise KeyError("k")

    def sync_custom(self) -> None:
        raise CustomError(8, "sync method")


@asyncray.remote
async def async_task_raises() -> None:
    await asyncio.sleep(0)
    raise CustomError(9, "async task")


def test_errors_of_async_methods_and_tasks_keep_their_class(ray):
    a = Raises.remote()
    for ref, code in ((a.async_custom.remote(), 7), (a.sync_custom.remote(), 8), (async_task_raises.remote(), 9)):
        with pytest.raises(CustomError) as info:
            ray.get(ref, timeout=10)
        assert info.value.code == code and isinstance(info.value, asyncray.TaskError)
    with pytest.raises(KeyError):
        ray.get(a.async_builtin.remote(), timeout=10)

    async def awaited() -> None:
        with pytest.raises(CustomError):
            await a.async_custom.remote()
        with pytest.raises(CustomError):
            await async_task_raises.remote()

    asyncio.run(awaited())


def test_subclassing_an_actor_class_says_what_to_do_instead():
    @asyncray.remote
    class Base:
        LIMIT = 3

    with pytest.raises(asyncray.actor.ActorClassInheritanceException, match="Inheriting from actor classes is not currently supported"):
        class Derived(Base):
            pass
    assert issubclass(asyncray.actor.ActorClassInheritanceException, TypeError)

    class Plain(Base.__asyncray_class__):  # what the message suggests works
        pass

    assert Plain.LIMIT == 3


class Flaky(Exception):
    """Raised by Fails below until it has failed enough."""


@asyncray.remote
class Fails:
    def __init__(self):
        self.calls = 0

    def until(self, n, exc=Flaky):
        self.calls += 1
        if self.calls <= n:
            raise exc(f"call {self.calls}")
        return self.calls

    @asyncray.method(max_task_retries=3, retry_exceptions=[Flaky])
    def decorated(self, n):
        self.calls += 1
        if self.calls <= n:
            raise Flaky(f"call {self.calls}")
        return self.calls


def test_actor_calls_retry_on_the_exceptions_they_allow(ray):
    a = Fails.remote()
    assert ray.get(a.until.options(max_task_retries=3, retry_exceptions=True).remote(2), timeout=30) == 3
    b = Fails.remote()
    with pytest.raises(Flaky, match="call 1"):  # not retried without retry_exceptions
        ray.get(b.until.options(max_task_retries=3).remote(1), timeout=30)
    c = Fails.remote()
    with pytest.raises(KeyError):  # only the listed classes are retried
        ray.get(c.until.options(max_task_retries=3, retry_exceptions=[Flaky]).remote(1, KeyError), timeout=30)
    d = Fails.remote()
    with pytest.raises(Flaky, match="call 2"):  # retries are bounded
        ray.get(d.until.options(max_task_retries=1, retry_exceptions=True).remote(5), timeout=30)
    e = Fails.remote()
    assert ray.get(e.decorated.remote(2), timeout=30) == 3  # from @method(retry_exceptions=[...])
    assert ray.get(e.until.remote(0), timeout=30) == 4  # later calls still run, in order after it
