"""A FIFO queue shared between tasks, actors and the driver, backed by an async actor (Ray's
``ray.util.queue.Queue``).

``put``/``get`` block (with optional timeout) from sync code; ``put_async``/``get_async``
await from async code. ``Empty``/``Full`` subclass the standard library's exceptions.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

import asyncray
from asyncray._client.ref import ObjectRef

# How long past a call's own timeout the caller waits for the queue actor's answer (an actor
# that is being placed or restarted); then ``get`` raises GetTimeoutError.
ANSWER_GRACE_S = 30.0


class Empty(_stdlib_queue.Empty):
    """``get`` found nothing (non-blocking, or the timeout passed)."""


class Full(_stdlib_queue.Full):
    """``put`` found no room (non-blocking, or the timeout passed)."""


class _QueueActor:
    """The queue's state. Every method is ``async`` so all of them run on the actor's one loop:
    the asyncio.Queue needs no lock, and a batch is checked and applied without a gap."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None) -> None:
        try:
            # The deadline runs here, not in the caller: a caller that gave up while the call
            # was in flight could otherwise lose an item the actor then stored or handed out.
            async with asyncio.timeout(timeout):
                await self.queue.put(item)
        except TimeoutError:
            raise Full(f"queue stayed full ({self.maxsize} items) for {timeout} s") from None

    async def get(self, timeout: float | None) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
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

    async def put_nowait_batch(self, items: list[Any]) -> None:
        # All or nothing: check the room first, then add without yielding to the loop.
        if self.maxsize > 0 and self.queue.qsize() + len(items) > self.maxsize:
            raise Full(
                f"cannot add {len(items)} items to a queue holding {self.queue.qsize()} "
                f"with maxsize {self.maxsize}"
            )
        for item in items:
            self.queue.put_nowait(item)

    async def get_nowait_batch(self, num_items: int) -> list[Any]:
        if num_items > self.queue.qsize():
            raise Empty(f"cannot get {num_items} items from a queue holding {self.queue.qsize()}")
        return [self.queue.get_nowait() for _ in range(num_items)]

    async def close(self) -> None:
        """Answered once the calls sent before it have started: the graceful shutdown's marker."""


class Queue:
    """A first-in first-out queue usable from any task, actor or driver; pass it around freely.

    Args:
        maxsize: the most items it holds; 0 (or less) means no limit.
        actor_options: options for the queue's actor, as ``ActorClass.options(...)`` takes
            (for example ``{"num_cpus": 0, "resources": {"head": 0.01}}``).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"Queue(maxsize=...) must be an int, got {type(maxsize).__name__}")
        self.maxsize = maxsize
        self._shut_down = False
        self.actor: Any = asyncray.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)  # None once shut down

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        n: int = _get(self._actor().qsize.remote())
        return n

    def qsize(self) -> int:
        """The number of items in the queue now (same as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        """True when no item waits."""
        return self.size() == 0

    def full(self) -> bool:
        """True when a bounded queue has no room."""
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item at the end.

        With ``block`` it waits for room, at most ``timeout`` seconds (None: for ever).

        Raises:
            Full: no room without blocking, or still none after ``timeout``.
        """
        _get(self._put_ref(item, block, timeout), timeout if block else 0.0)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item.

        With ``block`` it waits for one, at most ``timeout`` seconds (None: for ever).

        Raises:
            Empty: nothing there without blocking, or still nothing after ``timeout``.
        """
        return _get(self._get_ref(block, timeout), timeout if block else 0.0)

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for async code."""
        await _await(self._put_ref(item, block, timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for async code."""
        return await _await(self._get_ref(block, timeout))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` in order, in one call to the actor.

        Raises:
            Full: they do not all fit (then none is added).
        """
        if not isinstance(items, Iterable):
            raise TypeError(f"put_nowait_batch() needs an iterable of items, got {type(items).__name__}")
        _get(self._actor().put_nowait_batch.remote(list(items)))

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, in one call to the actor.

        Raises:
            Empty: fewer than ``num_items`` are there (then none is removed).
        """
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError(f"get_nowait_batch(num_items=...) must be an int, got {type(num_items).__name__}")
        if num_items < 0:
            raise ValueError(f"get_nowait_batch(num_items=...) must be >= 0, got {num_items}")
        items: list[Any] = _get(self._actor().get_nowait_batch.remote(num_items))
        return items

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor and free what it reserved; a second call does nothing.

        Without ``force`` the calls already sent from here get up to ``grace_period_s``
        seconds to start first; callers still blocked in ``get``/``put`` then see
        ActorDiedError. Items still in the queue are dropped.
        """
        if self._shut_down:
            return
        self._shut_down = True
        actor, self.actor = self.actor, None  # as in Ray: the queue lets go of its actor
        if not force:
            try:
                asyncray.get(actor.close.remote(), timeout=grace_period_s)
            except Exception:  # dead or slow: the kill below ends it either way
                pass
        asyncray.kill(actor)

    # ------------------------------------------------------------ internals
    def _actor(self) -> Any:
        if self._shut_down:
            raise RuntimeError("this Queue was shut down; create a new Queue")
        return self.actor

    def _put_ref(self, item: Any, block: bool, timeout: float | None) -> ObjectRef[None]:
        actor = self._actor()
        if not block:
            ref: ObjectRef[None] = actor.put_nowait.remote(item)
            return ref
        _check_timeout(timeout)
        ref = actor.put.remote(item, timeout)
        return ref

    def _get_ref(self, block: bool, timeout: float | None) -> ObjectRef[Any]:
        actor = self._actor()
        if not block:
            ref: ObjectRef[Any] = actor.get_nowait.remote()
            return ref
        _check_timeout(timeout)
        ref = actor.get.remote(timeout)
        return ref


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")


def _get(ref: ObjectRef[Any], timeout: float | None = None) -> Any:
    """The queue actor's answer; ``timeout`` (the caller's, counted in the actor) plus a grace
    bounds the wait here too, for an actor that is gone or not placed yet."""
    try:
        return asyncray.get(ref, timeout=None if timeout is None else timeout + ANSWER_GRACE_S)
    except (Empty, Full) as exc:
        raise _plain(exc) from None
    except BaseException:
        # Interrupted (Ctrl-C, the calling task cancelled) or failed: withdraw the call so a
        # blocked get cannot take an item later; a finished call ignores this.
        _withdraw(ref)
        raise


async def _await(ref: ObjectRef[Any]) -> Any:
    try:
        return await ref
    except (Empty, Full) as exc:
        raise _plain(exc) from None
    except asyncio.CancelledError:
        # The caller stopped waiting: withdraw the call so a blocked get does not take an
        # item later and hand it to nobody.
        _withdraw(ref)
        raise


def _withdraw(ref: ObjectRef[Any]) -> None:
    try:
        asyncray.cancel(ref)
    except Exception:  # the runtime is gone: nothing is left to withdraw
        pass


def _plain(exc: Exception) -> Exception:
    """The plain Empty or Full for one that came back from the actor as a TaskError.

    Raising the plain class keeps ``except queue.Empty`` working and the message short.
    """
    cause = exc.cause if isinstance(exc, asyncray.TaskError) else exc
    cls = Empty if isinstance(cause, Empty) else Full
    return cls(*cause.args) if cause is not None else cls(*exc.args)
