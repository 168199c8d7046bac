"""``multiprocessing.Pool`` on the cluster's actors, and Ray's ``as_completed``/``map_unordered``.

Swap one import: ``from asyncray.util.multiprocessing import Pool``. Each pool process is an
actor (``num_cpus=1``); a chunk of work is one actor call. One handler thread per pool hands
chunks to idle actors, collects results, runs callbacks and replaces actors (stdlib's
handler threads do the same jobs).
"""

from __future__ import annotations

import functools
import itertools
import math
import queue
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing import TimeoutError
from typing import Any, Generic, TypeVar

import cloudpickle

import asyncray
from asyncray._client.ref import ObjectRef
from asyncray.exceptions import SystemFailure

__all__ = ["AsyncResult", "IMapIterator", "MapResult", "Pool", "TimeoutError", "as_completed", "map_unordered"]

T = TypeVar("T")
S = TypeVar("S")

# What an actor call runs for each item of its chunk.
_MAP, _STAR, _APPLY = "map", "star", "apply"


class _RemoteTraceback(Exception):
    """Carries the worker's formatted traceback as the ``__cause__`` of a re-raised error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _PoolWorker:
    """One pool process: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run(self, fn: Callable[..., Any], mode: str, chunk: list[Any]) -> tuple[bool, Any]:
        """``(True, results)``, or ``(False, (exception, traceback text))`` for the first failure."""
        try:
            if mode == _MAP:
                return True, [fn(x) for x in chunk]
            if mode == _STAR:
                return True, [fn(*args) for args in chunk]
            return True, [fn(*args, **kwds) for args, kwds in chunk]
        except Exception as exc:
            # Returned, not raised: the caller gets the exception's own class back, as the stdlib does.
            tb = traceback.format_exc()
            try:
                cloudpickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc} (the exception itself could not be pickled)")
            return False, (exc, tb)


_PoolActor: Any = asyncray.remote(num_cpus=1)(_PoolWorker)


class AsyncResult(Generic[T]):
    """The result of ``apply_async`` (stdlib's ``AsyncResult``/``ApplyResult``)."""

    def __init__(
        self,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._event = threading.Event()
        self._ok = False
        self._value: Any = None
        self._callback = callback
        self._error_callback = error_callback

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError if it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._ok

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """The value; re-raises the call's exception; ``multiprocessing.TimeoutError`` on timeout."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._ok:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        self._ok, self._value = ok, value
        callback = self._callback if ok else self._error_callback
        if callback is not None:
            try:
                callback(value)
            except Exception:
                # The handler thread must survive a bad callback; stdlib prints it too.
                traceback.print_exc()
        self._event.set()

    def _chunk_done(self, index: int, ok: bool, value: Any) -> None:
        self._set(ok, value[0] if ok else value)


ApplyResult = AsyncResult


class MapResult(AsyncResult[list[T]]):
    """The result of ``map_async``/``starmap_async``: fails with the first chunk that fails."""

    def __init__(
        self,
        nchunks: int,
        length: int,
        chunksize: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(callback, error_callback)
        self._values: list[Any] = [None] * length
        self._chunksize = chunksize
        self._left = nchunks
        self._lock = threading.Lock()  # chunks of a terminated pool may be failed from another thread
        if nchunks == 0:
            self._set(True, [])

    def _chunk_done(self, index: int, ok: bool, value: Any) -> None:
        with self._lock:
            if self.ready():
                return  # already failed: later chunks change nothing
            if not ok:
                self._set(False, value)
                return
            start = index * self._chunksize
            self._values[start : start + len(value)] = value
            self._left -= 1
            if self._left == 0:
                self._set(True, self._values)


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class IMapIterator(Generic[T]):
    """What ``imap``/``imap_unordered`` return: results as chunks arrive; ``next(timeout)``."""

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._cond = threading.Condition()
        self._arrived: dict[int, tuple[bool, Any]] = {}  # by chunk index (ordered) or arrival count
        self._count = 0  # chunks arrived
        self._taken = 0  # chunks moved into _items
        self._items: deque[Any] = deque()
        self._length: int | None = None  # chunks in all, once the input is read to its end

    def _chunk_done(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._arrived[index if self._ordered else self._count] = (ok, value)
            self._count += 1
            self._cond.notify_all()

    def _set_length(self, nchunks: int) -> None:
        with self._cond:
            self._length = nchunks
            self._cond.notify_all()

    def __iter__(self) -> IMapIterator[T]:
        return self

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """The next result; ``multiprocessing.TimeoutError`` if none comes within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._items:
                    item = self._items.popleft()
                    if isinstance(item, _Failure):
                        raise item.exc
                    return item  # type: ignore[no-any-return]
                if self._taken == self._length:
                    raise StopIteration
                outcome = self._arrived.pop(self._taken, None)
                if outcome is not None:
                    self._taken += 1
                    ok, value = outcome
                    if ok:
                        self._items.extend(value)
                    else:
                        self._items.append(_Failure(value))
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                self._cond.wait(left)


class _Chunk:
    """One actor call's worth of work and where its outcome goes."""

    __slots__ = ("fn", "index", "items", "mode", "result")

    def __init__(self, result: Any, index: int, fn: Callable[..., Any], mode: str, items: list[Any]) -> None:
        self.result = result
        self.index = index
        self.fn = fn
        self.mode = mode
        self.items = items


class _Slot:
    """One pool process: its actor, the chunk it runs (one at a time) and how many it ran."""

    __slots__ = ("actor", "chunk", "done")

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.chunk: _Chunk | None = None
        self.done = 0


class _Core:
    """The pool's state, owned by its handler thread (Pool.__del__ can run while this lives on)."""

    def __init__(
        self,
        processes: int,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        maxtasksperchild: int | None,
    ) -> None:
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasks = maxtasksperchild
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.pending: deque[_Chunk] = deque()
        self.slots = [_Slot(self._new_actor()) for _ in range(processes)]
        self.idle: deque[_Slot] = deque(self.slots)  # FIFO: work goes round the actors
        self.closing = False
        self.feeders = 0  # imap feeder threads still reading their input: close waits for them
        self.lock = threading.Lock()  # orders submissions against terminate (see post_submit)
        self.terminated = False
        self.calls = 0  # actor calls made: one per chunk
        self.thread = threading.Thread(target=self._run, name="asyncray-pool-handler", daemon=True)
        self.thread.start()

    def post_submit(self, chunks: list[_Chunk]) -> bool:
        """Queue chunks for the handler; False once terminated (nothing will run them)."""
        with self.lock:
            if self.terminated:
                return False
            self.events.put(("submit", chunks))
            return True

    def _new_actor(self) -> Any:
        return _PoolActor.remote(self.initializer, self.initargs)

    def _run(self) -> None:
        while True:
            try:
                event = self.events.get(timeout=1.0)
            except queue.Empty:
                if not asyncray.is_initialized():  # the runtime went away under us: nothing will finish
                    self._terminate("the runtime shut down before this pool task finished")
                    return
                continue
            kind = event[0]
            try:
                if kind == "submit":
                    self.pending.extend(event[1])
                elif kind == "done":
                    self._finished(event[1], event[2])
                elif kind == "close":
                    self.closing = True
                elif kind == "feeding":
                    self.feeders += event[1]
                elif kind == "terminate":
                    self._terminate("the pool was terminated before this task finished")
                    return
                self._dispatch()
            except Exception:
                traceback.print_exc()  # a bug here must not silently stop every pending result
            if self.closing and not self.feeders and not self.pending and all(s.chunk is None for s in self.slots):
                for slot in self.slots:
                    _kill(slot.actor)
                return

    def _dispatch(self) -> None:
        while self.pending and self.idle:
            slot = self.idle.popleft()
            chunk = self.pending.popleft()
            try:
                ref = slot.actor.run.remote(chunk.fn, chunk.mode, chunk.items)
            except Exception as exc:  # e.g. an argument that cannot be pickled: fails this chunk only
                self.idle.appendleft(slot)
                chunk.result._chunk_done(chunk.index, False, exc)
                continue
            slot.chunk = chunk
            self.calls += 1
            ref.future().add_done_callback(functools.partial(self._post_done, slot))

    def _post_done(self, slot: _Slot, fut: Any) -> None:
        # Runs on the runtime's loop: hand over at once, user callbacks must not run there.
        self.events.put(("done", slot, fut))

    def _finished(self, slot: _Slot, fut: Any) -> None:
        chunk = slot.chunk
        if chunk is None:
            return
        slot.chunk = None
        alive = True
        try:
            ok, value = fut.result()
            if not ok:
                exc, tb = value
                exc.__cause__ = _RemoteTraceback(tb)
                value = exc
        except BaseException as exc:  # the call itself failed: the actor died, or a system error
            ok, value = False, exc
            alive = not isinstance(exc, SystemFailure)
        slot.done += 1
        if alive and not (self.maxtasks and slot.done >= self.maxtasks):
            self.idle.append(slot)
        elif self.closing and not self.pending:
            _kill(slot.actor)  # no more work: do not start a replacement only to end it
        else:
            _kill(slot.actor)
            slot.actor, slot.done = self._new_actor(), 0
            self.idle.append(slot)
        self._dispatch()  # keep the actors busy before running the user's callbacks
        chunk.result._chunk_done(chunk.index, ok, value)

    def _terminate(self, why: str) -> None:
        with self.lock:
            self.terminated = True
        chunks = [s.chunk for s in self.slots if s.chunk is not None] + list(self.pending)
        self.pending.clear()
        # Submissions queued behind the terminate event: no later ones can come (see post_submit).
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event[0] == "submit":
                chunks.extend(event[1])
        for slot in self.slots:
            slot.chunk = None
            _kill(slot.actor)
        for chunk in chunks:
            chunk.result._chunk_done(chunk.index, False, RuntimeError(why))


def _kill(actor: Any) -> None:
    try:
        asyncray.kill(actor)
    except Exception:
        pass  # already dead, or the runtime is gone: either way it runs no more


class Pool:
    """``multiprocessing.Pool`` whose processes are actors of the cluster (one CPU each).

    ``context`` is ignored (as in Ray). ``ray_address`` is used to connect when the runtime
    is not initialized yet.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
    ) -> None:
        self._state = "INIT"  # __del__ looks at it even when __init__ raised
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or isinstance(maxtasksperchild, bool) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if not asyncray.is_initialized():
            asyncray.init(address=ray_address)
        cpus = int(asyncray.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = max(cpus, 1)
        if processes > cpus:
            # Each process holds a CPU for its life: extra ones would never start and their work would hang.
            raise ValueError(f"Pool(processes={processes}) needs {processes} CPUs, but the cluster has {cpus}")
        self._processes = processes
        self._core = _Core(processes, initializer, tuple(initargs), maxtasksperchild)
        self._state = "RUN"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state} pool_size={getattr(self, '_processes', 0)}>"

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "RUN":
            # Terminate before warning: warnings may be errors, and the actors must go either way.
            what = repr(self)
            self._state = "TERMINATE"
            self._core.events.put(("terminate",))
            warnings.warn(f"unclosed running multiprocessing pool {what}", ResourceWarning, source=self, stacklevel=1)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _submit(self, result: Any, fn: Callable[..., Any], mode: str, items: list[Any], chunksize: int) -> int:
        chunks = [
            _Chunk(result, i, fn, mode, items[start : start + chunksize])
            for i, start in enumerate(range(0, len(items), chunksize))
        ]
        if chunks and not self._core.post_submit(chunks):
            raise ValueError("Pool not running")
        return len(chunks)

    # apply

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Run ``func(*args, **kwds)`` in a pool process; returns its AsyncResult."""
        self._check_running()
        result: AsyncResult[T] = AsyncResult(callback, error_callback)
        self._submit(result, func, _APPLY, [(tuple(args), dict(kwds or {}))], 1)
        return result

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> T:
        """``func(*args, **kwds)`` run in a pool process (blocks for the value)."""
        return self.apply_async(func, args, kwds).get()

    # map and starmap

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        mode: str,
        chunksize: int | None,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> MapResult[T]:
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            # As the stdlib: about four chunks per process, so uneven items still balance.
            chunksize = math.ceil(len(items) / (self._processes * 4)) if items else 1
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        nchunks = math.ceil(len(items) / chunksize)
        result: MapResult[T] = MapResult(nchunks, len(items), chunksize, callback, error_callback)
        self._submit(result, func, mode, items, chunksize)
        return result

    def map_async(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """``[func(x) for x in iterable]`` in chunks over the pool; returns a MapResult."""
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def map(self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int | None = None) -> list[T]:
        """``[func(x) for x in iterable]`` in chunks over the pool, in order."""
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """``[func(*args) for args in iterable]`` over the pool; returns a MapResult."""
        return self._map_async(func, iterable, _STAR, chunksize, callback, error_callback)

    def starmap(
        self, func: Callable[..., T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[T]:
        """``[func(*args) for args in iterable]`` over the pool, in order."""
        return self.starmap_async(func, iterable, chunksize).get()

    # imap

    def _imap(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int, ordered: bool
    ) -> IMapIterator[T]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        result: IMapIterator[T] = IMapIterator(ordered)
        self._core.events.put(("feeding", 1))  # before close() can be queued behind it
        # A thread reads the input, so imap returns at once and a long generator streams (as the stdlib).
        threading.Thread(
            target=self._feed, args=(result, func, iter(iterable), chunksize), name="asyncray-pool-feeder", daemon=True
        ).start()
        return result

    def _feed(self, result: IMapIterator[Any], func: Callable[..., Any], it: Iterator[Any], chunksize: int) -> None:
        index = 0
        try:
            while True:
                items = list(itertools.islice(it, chunksize))
                if not items:
                    break
                if not self._core.post_submit([_Chunk(result, index, func, _MAP, items)]):
                    result._chunk_done(index, False, RuntimeError("the pool was terminated before this task finished"))
                    index += 1
                    break
                index += 1
        except Exception as exc:  # the input itself raised: the iterator raises it in its place
            result._chunk_done(index, False, exc)
            index += 1
        finally:
            result._set_length(index)
            self._core.events.put(("feeding", -1))

    def imap(self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int = 1) -> IMapIterator[T]:
        """Like ``map``, but an iterator that yields each result (in order) as soon as it can."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int = 1) -> IMapIterator[T]:
        """Like ``imap``, but results come in the order chunks finish."""
        return self._imap(func, iterable, chunksize, ordered=False)

    # lifetime

    def close(self) -> None:
        """Accept no more work; the processes end once what was submitted is done."""
        if self._state == "RUN":
            self._state = "CLOSE"
            self._core.events.put(("close",))

    def terminate(self) -> None:
        """End the processes now; results still outstanding fail with RuntimeError."""
        if self._state == "INIT":
            return
        self._state = "TERMINATE"
        self._core.events.put(("terminate",))
        if threading.current_thread() is not self._core.thread:
            self._core.thread.join()

    def join(self) -> None:
        """Wait for the processes to end; call ``close()`` or ``terminate()`` first."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._state == "INIT":
            return
        if threading.current_thread() is not self._core.thread:
            self._core.thread.join()


def as_completed(
    refs: Sequence[ObjectRef[Any]], *, chunk_size: int = 10, yield_obj_refs: bool = False, **kwargs: Any
) -> Iterator[Any]:
    """Yield results (or, with ``yield_obj_refs``, refs) as they finish, as Ray's ``ray.util.as_completed``.

    Each round asks ``wait`` for up to ``chunk_size`` ready refs; ``kwargs`` go to ``wait``.
    """
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    return _as_completed(list(refs), chunk_size, yield_obj_refs, kwargs)


def _as_completed(
    pending: list[ObjectRef[Any]], chunk_size: int, yield_obj_refs: bool, kwargs: dict[str, Any]
) -> Iterator[Any]:
    while pending:
        ready, pending = asyncray.wait(pending, num_returns=min(chunk_size, len(pending)), **kwargs)
        yield from (ready if yield_obj_refs else asyncray.get(ready))


def map_unordered(
    fn: Any,
    items: Iterable[Any],
    *,
    backpressure_size: int | None = 100,
    chunk_size: int = 10,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """``fn.remote(item)`` for each item, at most ``backpressure_size`` in flight; results as they finish.

    As Ray's ``ray.util.map_unordered``: ``fn`` is a remote function, ``kwargs`` go to ``wait``.
    """
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if backpressure_size is not None and backpressure_size < 1:
        raise ValueError("`backpressure_size` must be >= 1 or None")
    return _map_unordered(fn, iter(items), backpressure_size, chunk_size, yield_obj_refs, kwargs)


def _map_unordered(
    fn: Any,
    items: Iterator[Any],
    backpressure_size: int | None,
    chunk_size: int,
    yield_obj_refs: bool,
    kwargs: dict[str, Any],
) -> Iterator[Any]:
    in_flight: list[ObjectRef[Any]] = []
    for item in items:
        while backpressure_size is not None and len(in_flight) >= backpressure_size:
            ready, in_flight = asyncray.wait(in_flight, num_returns=min(chunk_size, len(in_flight)), **kwargs)
            yield from (ready if yield_obj_refs else asyncray.get(ready))
        in_flight.append(fn.remote(item))
    yield from _as_completed(in_flight, chunk_size, yield_obj_refs, kwargs)
