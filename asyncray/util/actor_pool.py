"""ActorPool: spread work over a fixed set of actors (Ray's ``ray.util.ActorPool``).

Usable from sync code (``map``, ``get_next``) and from async code (``amap``, ``aget_next``).
As in Ray, an actor counts as busy until its result has been taken with ``get_next*``;
work beyond the idle actors waits in the pool and starts as results are taken.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncray
from asyncray import aio
from asyncray._client.ref import ObjectRef
from asyncray.exceptions import ActorDiedError

_TIMEOUT_MSG = "Timed out waiting for result"

Fn = Callable[[Any, Any], Any]


@dataclass
class _Job:
    """One submitted value: the refs ``fn`` returned and the actor running it."""

    index: int
    refs: list[ObjectRef[Any]]
    many: bool  # fn returned a list/tuple of refs (num_returns > 1): the result is a list
    actor: Any


class ActorPool:
    """Hand values to idle actors; collect results in submission or completion order.

    ``fn(actor, value)`` must return what ``actor.method.remote(...)`` returns: an ObjectRef,
    or a list/tuple of them for a method with ``num_returns > 1`` (the result is then the
    list of their values).
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: deque[Any] = deque(actors)
        # Insertion order is submission order, so the first job is the next in order.
        self._jobs: dict[int, _Job] = {}
        self._next_index = 0
        self._pending: deque[tuple[Fn, Any]] = deque()

    # ------------------------------------------------------------ submitting
    def submit(self, fn: Fn, value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor now, or queue it until one is free."""
        if not self._idle:
            self._pending.append((fn, value))
            return
        actor = self._idle.popleft()
        try:
            refs, many = _refs_of(fn(actor, value))
        except BaseException:
            self._idle.appendleft(actor)  # nothing runs on it: it stays idle
            raise
        self._jobs[self._next_index] = _Job(self._next_index, refs, many, actor)
        self._next_index += 1

    def map(self, fn: Fn, values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` over ``values``; an iterator of the results in input order.

        Work starts here, not when the iterator is first read. Results still unread from
        earlier submissions are dropped first, as in Ray.
        """
        self._start_all(fn, values)
        return self._drain(self.get_next)

    def map_unordered(self, fn: Fn, values: Iterable[Any]) -> Iterator[Any]:
        """Like ``map``, but results come in the order they complete."""
        self._start_all(fn, values)
        return self._drain(self.get_next_unordered)

    def _start_all(self, fn: Fn, values: Iterable[Any]) -> None:
        """Drop unread results of earlier submissions, then submit every value (work starts now)."""
        self._discard_outstanding()
        for v in values:
            self.submit(fn, v)

    def _drain(self, take: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield take()

    def _discard_outstanding(self) -> None:
        # Ray's map() forgets what earlier submit()s left unread; their actors go back idle
        # (a call still running there delays the next one, as actor calls run in order).
        # Values not yet started are dropped rather than started and then ignored.
        self._pending.clear()
        for job in list(self._jobs.values()):
            del self._jobs[job.index]
            self._idle.append(job.actor)

    # ------------------------------------------------------------ state
    def has_next(self) -> bool:
        """True while submitted results have not been taken."""
        return bool(self._jobs)

    def has_free(self) -> bool:
        """True when an actor is idle and no submitted value waits for one."""
        return bool(self._idle) and not self._pending

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it picks up waiting work at once)."""
        if actor in self._idle or any(job.actor == actor for job in self._jobs.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    def pop_idle(self) -> Any | None:
        """Remove and return an idle actor, or None when none is free."""
        return self._idle.pop() if self.has_free() else None

    # ------------------------------------------------------------ sync results
    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order.

        Raises:
            StopIteration: nothing is pending.
            TimeoutError: not ready within ``timeout`` seconds. With ``ignore_if_timedout``
                the result is dropped first, so the next call moves on to the one after.
        """
        job = self._first_job()
        if timeout is not None and job.refs:
            ready, _ = asyncray.wait(job.refs, num_returns=len(job.refs), timeout=timeout)
            if len(ready) < len(job.refs):
                self._timed_out(job, ignore_if_timedout)
        return self._result(job)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Whichever pending result is ready first (the oldest when several are).

        Raises:
            StopIteration: nothing is pending.
            TimeoutError: none ready within ``timeout`` seconds. With ``ignore_if_timedout``
                the oldest pending result is dropped first.
        """
        oldest = self._first_job()
        deadline = None if timeout is None else time.monotonic() + timeout
        refs = self._all_refs()
        ready: set[ObjectRef[Any]] = set()
        while True:
            job = self._ready_job(ready)
            if job is not None:
                return self._result(job)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # One more ref than now: a job with several refs is ready only when all are.
            done, _ = asyncray.wait(refs, num_returns=len(ready) + 1, timeout=left)
            if len(done) == len(ready) and left is not None:
                self._timed_out(oldest, ignore_if_timedout)
            ready = set(done)

    # ------------------------------------------------------------ async results
    async def aget_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """``get_next`` for async code (raises StopAsyncIteration when nothing is pending)."""
        if not self._jobs:
            raise StopAsyncIteration("No more results to get")
        job = self._first_job()
        if timeout is not None and job.refs:
            ready, _ = await aio.wait(job.refs, num_returns=len(job.refs), timeout=timeout)
            if len(ready) < len(job.refs):
                self._timed_out(job, ignore_if_timedout)
        return await self._aresult(job)

    async def aget_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """``get_next_unordered`` for async code."""
        if not self._jobs:
            raise StopAsyncIteration("No more results to get")
        oldest = self._first_job()
        deadline = None if timeout is None else time.monotonic() + timeout
        refs = self._all_refs()
        ready: set[ObjectRef[Any]] = set()
        while True:
            job = self._ready_job(ready)
            if job is not None:
                return await self._aresult(job)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await aio.wait(refs, num_returns=len(ready) + 1, timeout=left)
            if len(done) == len(ready) and left is not None:
                self._timed_out(oldest, ignore_if_timedout)
            ready = set(done)

    def amap(self, fn: Fn, values: Iterable[Any]) -> AsyncIterator[Any]:
        """``map`` for async code: ``async for result in pool.amap(fn, values)``; starts work at once."""
        self._start_all(fn, values)
        return self._adrain(self.aget_next)

    def amap_unordered(self, fn: Fn, values: Iterable[Any]) -> AsyncIterator[Any]:
        """``map_unordered`` for async code; starts work at once."""
        self._start_all(fn, values)
        return self._adrain(self.aget_next_unordered)

    async def _adrain(self, take: Callable[[], Awaitable[Any]]) -> AsyncIterator[Any]:
        while self.has_next():
            yield await take()

    # ------------------------------------------------------------ internals
    def _first_job(self) -> _Job:
        if not self._jobs:
            raise StopIteration("No more results to get")
        return next(iter(self._jobs.values()))

    def _all_refs(self) -> list[ObjectRef[Any]]:
        # Without repeats: wait() refuses a ref given twice (fn may hand back the same one).
        return list(dict.fromkeys(r for job in self._jobs.values() for r in job.refs))

    def _ready_job(self, ready: set[ObjectRef[Any]]) -> _Job | None:
        """The oldest job whose refs are all in ``ready``."""
        for job in self._jobs.values():
            if all(r in ready for r in job.refs):
                return job
        return None

    def _timed_out(self, job: _Job, ignore: bool) -> NoReturn:
        if not ignore:
            raise TimeoutError(_TIMEOUT_MSG)
        # As in Ray the actor goes back at once: its next call runs after the ignored one.
        del self._jobs[job.index]
        self._return_actor(job.actor)
        raise TimeoutError(f"{_TIMEOUT_MSG}. The task {job.refs if job.many else job.refs[0]} has been ignored.")

    def _result(self, job: _Job) -> Any:
        del self._jobs[job.index]
        alive = True
        try:
            values = asyncray.get(job.refs)
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(job.actor, alive)
        return values if job.many else values[0]

    async def _aresult(self, job: _Job) -> Any:
        del self._jobs[job.index]
        alive = True
        try:
            values = await aio.get(job.refs)
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(job.actor, alive)
        return values if job.many else values[0]

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        # A dead actor leaves the pool: handing it more work would fail every value.
        if alive:
            self._idle.append(actor)
        while self._pending and self._idle:
            self.submit(*self._pending.popleft())


def _refs_of(out: Any) -> tuple[list[ObjectRef[Any]], bool]:
    """The refs ``fn`` returned, and whether there were several (a list or tuple)."""
    if isinstance(out, ObjectRef):
        return [out], False
    if isinstance(out, list | tuple) and all(isinstance(r, ObjectRef) for r in out):
        return list(out), True
    raise TypeError(
        "the function given to ActorPool must return an ObjectRef (actor.method.remote(...)) "
        f"or a list of them, got {type(out).__name__}"
    )
