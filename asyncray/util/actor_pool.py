"""ActorPool: spread work over a fixed set of actors (Ray's ``ray.util.ActorPool``).

Usable from sync code (``map``, ``get_next``) and from async code (``amap``, ``aget_next``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import asyncray
from asyncray import aio
from asyncray._client.ref import ObjectRef


class ActorPool:
    """Hand values to idle actors; collect results in submission or completion order."""

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: deque[Any] = deque(actors)
        self._future_to_actor: dict[ObjectRef[Any], tuple[int, Any]] = {}
        self._index_to_future: dict[int, ObjectRef[Any]] = {}
        self._next_task_index = 0
        self._pending: deque[tuple[Callable[[Any, Any], ObjectRef[Any]], Any]] = deque()

    # ------------------------------------------------------------ submitting
    def submit(self, fn: Callable[[Any, Any], ObjectRef[Any]], value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if self._idle:
            actor = self._idle.popleft()
            ref = fn(actor, value)
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"the function given to ActorPool must return an ObjectRef, got {type(ref).__name__}")
            self._future_to_actor[ref] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = ref
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        """True while results are outstanding."""
        return bool(self._future_to_actor)

    def has_free(self) -> bool:
        """True when an actor is idle and nothing is queued."""
        return bool(self._idle) and not self._pending

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

    def _take(self, ref: ObjectRef[Any]) -> None:
        index, actor = self._future_to_actor.pop(ref)
        self._index_to_future.pop(index, None)
        self._return_actor(actor)

    # ------------------------------------------------------------ sync results
    def get_next(self, timeout: float | None = None) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ref = self._index_to_future[min(self._index_to_future)]
        ready, _ = asyncray.wait([ref], timeout=timeout)
        if not ready:
            raise TimeoutError("timed out waiting for the next result")
        self._take(ref)
        return asyncray.get(ref)

    def get_next_unordered(self, timeout: float | None = None) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = asyncray.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("timed out waiting for a result")
        ref = ready[0]
        self._take(ref)
        return asyncray.get(ref)

    def map(self, fn: Callable[[Any, Any], ObjectRef[Any]], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` over values; results in input order."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable[[Any, Any], ObjectRef[Any]], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` over values; results as they complete."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    # ------------------------------------------------------------ async results
    async def aget_next(self) -> Any:
        """``get_next`` for async code."""
        if not self.has_next():
            raise StopAsyncIteration
        ref = self._index_to_future[min(self._index_to_future)]
        value = await ref
        self._take(ref)
        return value

    async def amap(self, fn: Callable[[Any, Any], ObjectRef[Any]], values: Iterable[Any]) -> AsyncIterator[Any]:
        """``map`` for async code: ``async for result in pool.amap(fn, values)``."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield await self.aget_next()

    async def amap_unordered(self, fn: Callable[[Any, Any], ObjectRef[Any]], values: Iterable[Any]) -> AsyncIterator[Any]:
        """``map_unordered`` for async code."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            ready, _ = await aio.wait(list(self._future_to_actor), num_returns=1)
            ref = ready[0]
            self._take(ref)
            yield await ref

    def push(self, actor: Any) -> None:
        """Add an actor to the pool."""
        self._return_actor(actor)

    def pop_idle(self) -> Any | None:
        """Remove and return an idle actor, or None."""
        return self._idle.popleft() if self.has_free() else None
