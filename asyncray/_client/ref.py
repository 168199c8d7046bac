"""ObjectRef: a future for a value somewhere in the cluster; awaitable (SPEC section 3)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from asyncray._client import context
from asyncray._store import serialization

if TYPE_CHECKING:
    from asyncray._client.objects import ObjectTable

T_co = TypeVar("T_co", covariant=True)


class ObjectRef(Generic[T_co]):
    """Refers to an immutable value of type ``T_co``; ``await ref`` or ``asyncray.get(ref)`` returns it.

    The process that made the ref owns the value; every other process that unpickles the
    ref is a borrower and asks the owner for it.
    """

    __slots__ = ("__weakref__", "_id", "_objects", "_owner", "_view")

    def __init__(self, object_id: bytes, owner: str, objects: ObjectTable | None) -> None:
        self._id = object_id
        self._owner = owner
        self._objects = objects  # the object table of this process's runtime that counts this ref
        self._view: _FutureView | None = None  # made on first use as an asyncio future
        if objects is not None:
            objects.incref(object_id, owner)

    def __del__(self) -> None:
        objects = self._objects
        if objects is not None:
            try:
                objects.decref(self._id)
            except Exception:  # interpreter shutdown: nothing left to free
                pass

    @property
    def id(self) -> bytes:
        """The object id, as bytes."""
        return self._id

    @property
    def owner(self) -> str:
        """Address of the process that owns the value."""
        return self._owner

    def hex(self) -> str:
        """The id as hex, as Ray's ``ObjectRef.hex()``."""
        return self._id.hex()

    def binary(self) -> bytes:
        """The id as bytes, as Ray's ``ObjectRef.binary()``."""
        return self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self) -> Any:
        # Pickled inside a task's arguments or a stored value, the ref is collected and kept
        # alive by what holds that value; pickled any other way, its owner pins the object.
        if not serialization.note_ref(self) and self._objects is not None:
            self._objects.ref_escaped(self._id)
        return (_rebuild_ref, (self._id, self._owner))

    def _require_core(self) -> ObjectTable:
        if self._objects is None:
            raise RuntimeError("this ObjectRef belongs to no running asyncray runtime; call asyncray.init() first")
        return self._objects

    def __await__(self) -> Generator[Any, None, T_co]:
        core = self._require_core()
        if not core.is_ready(self):
            yield from core.ready_future(self).__await__()
        if core.needs_localizing(self):  # stored on another node: copy it here first
            yield from core.localize_refs([self]).__await__()
        value: T_co = core.load(self)
        return value

    # ---- asyncio's Future protocol, so that ``asyncio.gather(*refs)`` and ``asyncio.wait(refs)``
    # take refs as they are instead of wrapping each in a Task (a visible cost for 10,000 refs).
    # Cancelling a ref *as a future* (what ``wait_for`` does at its deadline, or a cancelled
    # ``gather``) stops those waits only: the task goes on, and the ref stays usable.
    _asyncio_future_blocking = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (a ref is not tied to one)."""
        return asyncio.get_running_loop()

    def cancel(self, msg: Any = None) -> bool:
        """Stop asyncio's waits on this ref (``wait_for``'s deadline, a cancelled ``gather``).

        The task is not cancelled (that is ``asyncray.cancel``): the waiters wake with
        CancelledError, and a later ``get``/``await`` still returns the value. False when
        the value is already here.
        """
        if self._require_core().is_ready(self):
            return False
        view = self._view
        if view is None:
            view = self._view = _FutureView()
        if view.cancelled:
            return False
        view.cancelled, view.message = True, msg
        entries, view.entries = view.entries, []
        for entry in entries:
            entry.fire_on_cancel = True
            entry.ready.cancel()  # its done callback runs the waiter's callback, as a cancelled future's would
        return True

    def done(self) -> bool:
        """True once the value (or error) is known here, or while cancelled as a future."""
        view = self._view
        return (view is not None and view.cancelled) or self._require_core().is_ready(self)

    def cancelled(self) -> bool:
        """True after ``cancel()`` stopped asyncio's waits, until the cancellation is read."""
        view = self._view
        return view is not None and view.cancelled

    def _take_cancellation(self) -> asyncio.CancelledError | None:
        """The pending cancellation, consumed: the ref is an ordinary future again afterwards."""
        view = self._view
        if view is None or not view.cancelled:
            return None
        view.cancelled = False
        msg, view.message = view.message, None
        return asyncio.CancelledError(*(() if msg is None else (msg,)))

    def _make_cancelled_error(self) -> asyncio.CancelledError:
        # asyncio.gather asks a cancelled child for its error with this (private) name.
        view = self._view
        msg = view.message if view is not None else None
        return asyncio.CancelledError(*(() if msg is None else (msg,)))

    @property
    def _cancel_message(self) -> Any:
        # asyncio.gather reads a cancelled child's message here.
        return self._view.message if self._view is not None else None

    def result(self) -> T_co:
        """The value of a done ref (raises its error, or CancelledError once after ``cancel()``)."""
        cancelled = self._take_cancellation()
        if cancelled is not None:
            raise cancelled
        value: T_co = self._require_core().load(self)
        return value

    def exception(self) -> BaseException | None:
        """The error of a done ref, or None (without unpickling a value that is not an error)."""
        cancelled = self._take_cancellation()
        if cancelled is not None:
            raise cancelled
        if not self._require_core().holds_error(self):
            return None
        try:
            self.result()
        except BaseException as exc:
            return exc
        return None

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        """Call ``fn(ref)`` on the running loop once the ref is done (or cancelled as a future)."""
        core = self._require_core()
        view = self._view
        if view is None:
            view = self._view = _FutureView()
        if view.cancelled:  # a cancellation nobody read: this is a new wait, on the value again
            view.cancelled, view.message = False, None
        entry = _Callback(fn, core.ready_future(self))
        view.entries.append(entry)

        def fire(_f: Any) -> None:
            # Only while still registered: a removed callback never runs.
            if entry.fire_on_cancel or any(e is entry for e in view.entries):
                view.entries = [e for e in view.entries if e is not entry]
                fn(self)

        entry.ready.add_done_callback(fire, context=context)

    def remove_done_callback(self, fn: Any) -> int:
        """Forget callbacks added with ``add_done_callback``; returns how many."""
        view = self._view
        if view is None:
            return 0
        gone = [e for e in view.entries if e.fn == fn]
        if gone:
            view.entries = [e for e in view.entries if e.fn != fn]
            for e in gone:
                e.ready.cancel()
        return len(gone)

    def future(self) -> concurrent.futures.Future[T_co]:
        """A ``concurrent.futures.Future`` that resolves to the value (or the task's error)."""
        return self._require_core().concurrent_future(self)

    def as_future(self) -> asyncio.Future[T_co]:
        """An ``asyncio.Future`` on the running loop for the value (Ray's ``ObjectRef.as_future``).

        Cancelling it stops only this wait, not the task (as in Ray).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "ObjectRef.as_future() needs a running event loop; outside one use ref.future()"
                " (a concurrent.futures.Future) or asyncray.get(ref)"
            ) from None
        self._require_core()
        return loop.create_task(_value_of(self))


class _Callback:
    """One ``add_done_callback`` registration: the function and the readiness future that runs it."""

    __slots__ = ("fire_on_cancel", "fn", "ready")

    def __init__(self, fn: Any, ready: asyncio.Future[None]) -> None:
        self.fn = fn
        self.ready = ready
        self.fire_on_cancel = False  # set by ObjectRef.cancel(): run fn although the future was cancelled


class _FutureView:
    """A ref's state as an asyncio future: its callbacks, and a cancellation not read yet."""

    __slots__ = ("cancelled", "entries", "message")

    def __init__(self) -> None:
        self.entries: list[_Callback] = []
        self.cancelled = False
        self.message: Any = None


async def _value_of(ref: ObjectRef[T_co]) -> T_co:
    return await ref


def _rebuild_ref(object_id: bytes, owner: str) -> ObjectRef[Any]:
    core = context.get_core()
    return ObjectRef(object_id, owner, core.objects if core is not None else None)
