"""A FIFO queue shared between tasks, actors and the driver, backed by an async actor.

``put``/``get`` block (with optional timeout) from sync code; ``put_async``/``get_async``
await from async code. ``Empty``/``Full`` are the standard library's exceptions' subclasses.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from typing import Any

import asyncray


class Empty(_stdlib_queue.Empty):
    """``get`` found nothing (non-blocking, or the timeout passed)."""


class Full(_stdlib_queue.Full):
    """``put`` found no room (non-blocking, or the timeout passed)."""


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def put(self, item: Any, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            raise Full(f"queue stayed full for {timeout} s") from None

    async def get(self, timeout: float | None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise Empty(f"queue stayed empty for {timeout} s") from None

    async def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"queue is full ({self.maxsize} items)") from None

    async def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("queue is empty") from None


class Queue:
    """A first-in first-out queue usable from any task, actor or driver; pass it around freely."""

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        self.maxsize = maxsize
        self.actor = asyncray.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """Items in the queue now."""
        n: int = asyncray.get(self.actor.qsize.remote())
        return n

    qsize = size

    def empty(self) -> bool:
        """True when no item waits."""
        return self.size() == 0

    def full(self) -> bool:
        """True when a bounded queue has no room."""
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; waits for room when ``block`` (raising Full after ``timeout``)."""
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        ref = self.actor.put.remote(item, timeout) if block else self.actor.put_nowait.remote(item)
        _unwrap(lambda: asyncray.get(ref))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; waits when ``block`` (raising Empty after ``timeout``)."""
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        ref = self.actor.get.remote(timeout) if block else self.actor.get_nowait.remote()
        return _unwrap(lambda: asyncray.get(ref))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    async def put_async(self, item: Any, timeout: float | None = None) -> None:
        """Add an item from async code."""
        await _aunwrap(self.actor.put.remote(item, timeout))

    async def get_async(self, timeout: float | None = None) -> Any:
        """Take the oldest item from async code."""
        return await _aunwrap(self.actor.get.remote(timeout))

    def shutdown(self) -> None:
        """End the queue's actor."""
        asyncray.kill(self.actor)


def _unwrap(call: Any) -> Any:
    # The actor raises our Empty/Full; get() re-raises them as TaskError subclasses of them.
    # Raise the plain class so `except queue.Empty` and messages stay simple.
    try:
        return call()
    except (Empty, Full) as exc:
        raise _plain(exc) from None


def _plain(exc: Exception) -> BaseException:
    """The plain Empty or Full for one that came back from the actor as a TaskError."""
    cause = exc.cause if isinstance(exc, asyncray.TaskError) else None
    cls: type[BaseException] = type(cause) if cause is not None else type(exc)
    return cls(*exc.args)


async def _aunwrap(ref: Any) -> Any:
    try:
        return await ref
    except (Empty, Full) as exc:
        raise _plain(exc) from None
