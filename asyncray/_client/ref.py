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

    __slots__ = ("__weakref__", "_callbacks", "_id", "_objects", "_owner")

    def __init__(self, object_id: bytes, owner: str, objects: ObjectTable | None) -> None:
        self._id = object_id
        self._owner = owner
        self._objects = objects  # the object table of this process's runtime that counts this ref
        self._callbacks: dict[Any, Any] | None = None
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
    _asyncio_future_blocking = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (a ref is not tied to one)."""
        return asyncio.get_running_loop()

    def cancel(self, msg: Any = None) -> bool:
        """Futures can be cancelled; refs only through ``asyncray.cancel``."""
        return False

    def done(self) -> bool:
        """True once the value (or error) is known here."""
        return self._require_core().is_ready(self)

    def cancelled(self) -> bool:
        """Refs are never cancelled as futures (use ``asyncray.cancel``)."""
        return False

    def result(self) -> T_co:
        """The value of a done ref (raises its error)."""
        value: T_co = self._require_core().load(self)
        return value

    def exception(self) -> BaseException | None:
        """The error of a done ref, or None (without unpickling a value that is not an error)."""
        if not self._require_core().holds_error(self):
            return None
        try:
            self.result()
        except BaseException as exc:
            return exc
        return None

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        """Call ``fn(ref)`` on the running loop once the ref is done."""
        fut = self._require_core().ready_future(self)
        if self._callbacks is None:
            self._callbacks = {}
        self._callbacks[fn] = fut
        fut.add_done_callback(lambda _f: fn(self))

    def remove_done_callback(self, fn: Any) -> int:
        """Forget a callback added with ``add_done_callback``."""
        fut = (self._callbacks or {}).pop(fn, None)
        if fut is not None and not fut.done():
            fut.cancel()
            return 1
        return 0

    def future(self) -> concurrent.futures.Future[T_co]:
        """A ``concurrent.futures.Future`` that resolves to the value (or the task's error)."""
        return self._require_core().concurrent_future(self)


def _rebuild_ref(object_id: bytes, owner: str) -> ObjectRef[Any]:
    core = context.get_core()
    return ObjectRef(object_id, owner, core.objects if core is not None else None)
