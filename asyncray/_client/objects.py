"""Objects as one process sees them: what it owns, what it borrows, and waiting for values.

Ray's ownership model: the process that made a ref owns the value and frees it once no ref
remains here, in a running task's arguments, inside another stored value, or at a
borrower (a process that unpickled the ref and registered with the owner).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncray import _ids
from asyncray._client.links import CoreLinks
from asyncray._client.ref import ObjectRef
from asyncray._store import serialization as ser
from asyncray._threads import snapshot
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, ConnectionLost, RemoteCallError
from asyncray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    SerializationError,
)

if TYPE_CHECKING:
    from asyncray._store.shm import ObjectStore

log = logging.getLogger(__name__)

# The node answers at once (it measures and maybe spills in a thread); past this, write anyway.
RESERVE_TIMEOUT_S = 10.0
# An object we own whose copy could not be fetched: how long to wait for it to be found
# elsewhere or rebuilt (its node's death reaches us within the node timeout) before giving up.
RECOVER_WAIT_S = 30.0
# Freed object ids kept for a head that is away (past this, the oldest are dropped: their
# copies on other nodes then live until their owner exits).
MAX_UNSENT_FREED = 100_000
# The longest a blocking get waits for a copy from another node (a stalled transfer gives up
# after 60 s without data; then the recovery above): past this, the object counts as lost.
LOCALIZE_TIMEOUT_S = 60.0 + RECOVER_WAIT_S + 10.0
RECOVER_POLL_S = 0.2


def _settle(fut: asyncio.Future[None]) -> None:
    """Complete a readiness future unless it is done already (cancelled by a timeout, say)."""
    if not fut.done():
        fut.set_result(None)


def peer_address(conn: Connection) -> str:
    """The listening address of the process at the other end of a connection, either way round."""
    return conn.peer.address if conn.peer is not None else conn.state.get("address", "")


@dataclass(slots=True)
class _BorrowNotice:
    """What this process will tell one peer about refs at the end of this loop iteration."""

    add: list[bytes] = field(default_factory=list)
    drop: list[bytes] = field(default_factory=list)
    handoff: list[list[Any]] = field(default_factory=list)
    released: list[bytes] = field(default_factory=list)
    freed: list[bytes] = field(default_factory=list)  # only to the head (``_HEAD``)


_HEAD = "<head>"  # the notice "peer" for objects we freed (ObjectsFreed)


class _Entry:
    """One object this process knows: its descriptor once ready, and who waits for it."""

    __slots__ = ("borrowers", "contained", "desc", "fetching", "lineage", "owned", "pending", "pinned", "waiters")

    def __init__(self, owned: bool, desc: list[Any] | None = None) -> None:
        self.desc = desc
        self.waiters: list[Callable[[], None]] = []
        self.owned = owned
        self.pinned = False
        self.fetching = False
        self.borrowers: dict[str, int] | None = None  # owner side: borrower address -> count
        self.contained: list[ObjectRef[Any]] | None = None  # refs inside this value, kept while it lives
        self.pending = False  # a result of our task still running: it frees itself on arrival
        self.lineage: Any = None  # the TaskSpec that made this stored result (to rebuild it), or None


class _LoopBridge:
    """Readiness notices between the core's loop and another thread's loop, batched.

    ``await ref`` on a loop other than the core's costs two cross-thread wake-ups; with
    ``asyncio.gather`` over 10,000 refs they are batched: one wake-up per burst each way.
    """

    def __init__(self, table: ObjectTable, caller: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.caller = caller
        self._to_core: deque[tuple[ObjectRef[Any], asyncio.Future[None]]] = deque()
        self._to_caller: deque[asyncio.Future[None]] = deque()
        self._core_wake = False
        self._caller_wake = False

    def register(self, ref: ObjectRef[Any], fut: asyncio.Future[None]) -> None:
        """Caller's loop: ask to be told when ``ref`` is ready."""
        self._to_core.append((ref, fut))
        if not self._core_wake:
            self._core_wake = True
            self.table.links.call_soon(self._drain_core)

    def _drain_core(self) -> None:
        self._core_wake = False
        queue = self._to_core
        while queue:
            ref, fut = queue.popleft()
            self.table.when_ready(ref, functools.partial(self._ready, fut))

    def _ready(self, fut: asyncio.Future[None]) -> None:
        self._to_caller.append(fut)
        if not self._caller_wake:
            self._caller_wake = True
            try:
                self.caller.call_soon_threadsafe(self._drain_caller)
            except RuntimeError:  # the caller's loop is closed; nobody waits any more
                self._to_caller.clear()

    def _drain_caller(self) -> None:
        self._caller_wake = False
        queue = self._to_caller
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)


class ObjectTable:
    """Every object this process knows: entries, ref counts, borrowers, notices, waiting.

    Threading: the core's loop owns state changes; other threads only add entries for refs
    they mint, read ``_Entry.desc`` (one attribute read), count refs, and queue notices.
    """

    def __init__(self, links: CoreLinks, store: ObjectStore) -> None:
        self.links = links
        self.store = store
        self._objects: dict[bytes, _Entry] = {}
        self._refcounts: dict[bytes, int] = {}
        self._borrowed_from: dict[bytes, str] = {}  # borrowed object -> its owner's address
        self._borrow_out: dict[str, _BorrowNotice] = {}
        self._borrow_flush = False
        self._notice_lock = threading.Lock()  # borrow and free notices are queued from any thread
        self._handoff: dict[bytes, list[tuple[Connection, ObjectRef[Any]]]] = {}
        self._bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()
        self._freed_hooks: dict[bytes, Callable[[], None]] = {}
        self._unsent_freed: list[bytes] = []  # freed while the head was away

    @property
    def address(self) -> str:
        """This process's address: refs it mints are owned here."""
        return self.links.address

    def incref(self, object_id: bytes, owner: str) -> None:
        """A new ObjectRef to this object exists in this process (any thread)."""
        counts = self._refcounts
        n = counts.get(object_id, 0)
        counts[object_id] = n + 1
        if n == 0 and owner != self.address and self.address:
            # The first ref here to someone else's object: we are now a borrower (Ray's
            # ownership model); the owner keeps the object until we say we dropped it.
            self._borrowed_from[object_id] = owner
            self._queue_borrow(owner, object_id, True)

    def decref(self, object_id: bytes) -> None:
        """An ObjectRef was dropped; free the value when it was the last one anywhere (any thread)."""
        counts = self._refcounts
        n = counts.get(object_id, 0) - 1
        if n > 0:
            counts[object_id] = n
            return
        counts.pop(object_id, None)
        owner = self._borrowed_from.pop(object_id, None)
        if owner is not None:
            self._queue_borrow(owner, object_id, False)
        self._maybe_free(object_id)

    def _maybe_free(self, object_id: bytes) -> None:
        """Drop an object nobody references: here, in a running task, or as a borrower."""
        entry = self._objects.get(object_id)
        if entry is None or entry.pinned or entry.waiters or entry.borrowers or object_id in self._refcounts:
            return
        if entry.pending:
            return  # the task is still running; its result frees itself on arrival
        self._objects.pop(object_id, None)
        entry.contained = entry.lineage = None
        hook = self._freed_hooks.pop(object_id, None)
        if hook is not None:
            self.links.call_soon(hook)
        desc = entry.desc
        if entry.owned and desc is not None and desc[0] == ser.STORED:
            self.free_stored(object_id)

    def free_stored(self, object_id: bytes) -> None:
        """Delete an object we own from our node's store, and (through the head) every copy elsewhere (any thread)."""
        self.store.delete(object_id)
        self._queue_notice(_HEAD, "freed", object_id)

    def _queue_borrow(self, owner: str, object_id: bytes, add: bool) -> None:
        """Batch borrower notices per owner; one frame per owner per loop iteration (any thread)."""
        self._queue_notice(owner, "add" if add else "drop", object_id)

    def _queue_notice(self, address: str, kind: str, item: Any) -> None:
        """Add to what we tell ``address`` at the end of this loop turn (the lock: refs die on any thread)."""
        with self._notice_lock:
            notice = self._borrow_out.get(address)
            if notice is None:
                notice = self._borrow_out[address] = _BorrowNotice()
            getattr(notice, kind).append(item)
            schedule = not self._borrow_flush
            self._borrow_flush = True
        if schedule:
            self.links.call_soon(self._flush_borrows)

    def _flush_borrows(self) -> None:
        with self._notice_lock:
            out, self._borrow_out = self._borrow_out, {}
            self._borrow_flush = False
        for address, notice in out.items():
            if address == _HEAD:
                freed = self._unsent_freed + notice.freed
                if self.links.send_head(m.ObjectsFreed(object_ids=freed)):
                    self._unsent_freed = []
                else:  # the head is away: tell the next one (copies elsewhere are deleted then)
                    self._unsent_freed = freed[-MAX_UNSENT_FREED:]
                continue
            msg = m.Borrow(add=notice.add, drop=notice.drop, handoff=notice.handoff, released=notice.released)
            conn = self.links.route_to(address)
            if conn is not None:
                conn.send(msg)
            elif not self.links.closed:
                self.links.spawn(self._send_borrow_later(address, msg), "send-borrow-notice")

    async def _send_borrow_later(self, owner: str, msg: m.Borrow) -> None:
        try:
            (await self.links.peer(owner)).send(msg)
        except OSError:
            pass  # the owner is gone, and its objects with it

    def on_borrow(self, conn: Connection, msg: m.Borrow) -> None:
        """Owner side: a borrower started or stopped holding refs to our objects."""
        who = peer_address(conn)
        # Counts per borrower may dip below zero for a moment: a borrower's add and drop can
        # travel on different connections (one it opened, one we opened) and cross.
        for oid in msg.add:
            entry = self._objects.get(oid)
            if entry is not None and entry.owned:
                if entry.borrowers is None:
                    entry.borrowers = {}
                n = entry.borrowers.get(who, 0) + 1
                if n:
                    entry.borrowers[who] = n
                else:
                    del entry.borrowers[who]
                    self._maybe_free(oid)
        for oid in msg.drop:
            entry = self._objects.get(oid)
            if entry is not None and entry.owned:
                if entry.borrowers is None:
                    entry.borrowers = {}
                n = entry.borrowers.get(who, 0) - 1
                if n:
                    entry.borrowers[who] = n  # below zero: its add is still on the way
                else:
                    del entry.borrowers[who]
                    self._maybe_free(oid)
        for oid, holder in msg.handoff:  # after the adds: the new borrower is counted first
            if holder == self.address:
                self._release_handoff(oid)
            else:
                self._queue_notice(holder, "released", oid)
        for oid in msg.released:
            self._release_handoff(oid)

    def took_over(self, holder: str, refs: list[ObjectRef[Any]]) -> None:
        """We now hold refs that ``holder`` kept alive for us (inside a task's result): let it go.

        The notice goes through each object's owner, after our own ``Borrow`` add, so the
        owner never sees the holder drop before it knows about us.
        """
        for ref in refs:
            if ref.owner == self.address:  # our own object: our refs already count
                self._queue_notice(holder, "released", ref.id)
            else:
                self._queue_notice(ref.owner, "handoff", [ref.id, holder])

    def _release_handoff(self, object_id: bytes) -> None:
        holds = self._handoff.get(object_id)
        if holds:
            holds.pop(0)
            if not holds:
                del self._handoff[object_id]

    def hold_for_handoff(self, conn: Connection, refs: list[ObjectRef[Any]]) -> None:
        """Keep our refs returned inside a task's result alive until its caller borrows them.

        The caller registers as a borrower when the result arrives and says so through each
        object's owner (``took_over``); until then these holds stand in for it. A caller that
        goes away releases its holds.
        """
        for ref in refs:
            self._handoff.setdefault(ref.id, []).append((conn, ref))

    def release_handoffs(self, conn: Connection) -> None:
        """A caller's connection closed: the refs we held for it are free to go."""
        for oid, holds in snapshot(self._handoff).items():
            keep = [(c, r) for c, r in holds if c is not conn]
            if keep:
                self._handoff[oid] = keep
            else:
                del self._handoff[oid]

    def borrower_gone(self, address: str) -> None:
        """A borrower's process is gone: it holds nothing any more."""
        for oid, entry in snapshot(self._objects).items():
            if entry.borrowers and address in entry.borrowers:
                del entry.borrowers[address]
                self._maybe_free(oid)

    def ref_escaped(self, object_id: bytes) -> None:
        """A ref was pickled outside anything we track (e.g. by the user's own ``pickle.dumps``).

        Nobody can tell when such a copy dies, so the object stays pinned until shutdown.
        Refs inside task arguments, results, stored values and actor constructor arguments
        are tracked instead (collected while pickling) and never come here.
        """
        entry = self._objects.get(object_id)
        if entry is not None:
            entry.pinned = True

    def resend_freed(self) -> None:
        """A (new) head is connected: tell it what was freed while there was none (loop thread)."""
        if self._unsent_freed and self.links.send_head(m.ObjectsFreed(object_ids=self._unsent_freed)):
            self._unsent_freed = []

    def on_freed(self, object_id: bytes, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the loop once the object is freed: no ref to it is left anywhere
        (here, in tasks, or in borrowers). Actor handles hang the actor's life on this."""
        self._freed_hooks[object_id] = hook

    def put(self, value: Any) -> ObjectRef[Any]:
        """Store a value owned by this process (callable from any thread)."""
        contained: list[ObjectRef[Any]] = []
        try:
            with ser.collecting_refs(contained):
                pickled = ser.dumps(value)
        except Exception as exc:
            raise SerializationError(f"put() could not pickle a {type(value).__name__}: {exc}") from exc
        ref = self.put_serialized(value, pickled)
        if contained:  # refs inside a stored value live as long as it does
            self._objects[ref.id].contained = contained
        return ref

    def add_pending(self, object_ids: list[bytes]) -> list[ObjectRef[Any]]:
        """Entries (and refs) for the results of a task just submitted (any thread)."""
        refs: list[ObjectRef[Any]] = []
        objects, address = self._objects, self.links.address
        for oid in object_ids:
            entry = objects[oid] = _Entry(owned=True)
            entry.pending = True
            refs.append(ObjectRef(oid, address, self))
        return refs

    def set_result(
        self, object_id: bytes, desc: list[Any], inner: list[ObjectRef[Any]] | None, lineage: Any = None,
    ) -> None:
        """A task's result arrived: store it in its entry and wake waiters (loop thread).

        ``inner``: refs inside the value, which live as long as it does. A result nobody
        holds a ref to any more is freed at once.
        """
        entry = self._objects.get(object_id)
        if entry is None:
            if desc[0] == ser.STORED:
                self.free_stored(object_id)  # nobody holds a ref any more
            return  # (refs inside it are dropped with ``inner``)
        entry.pending = False
        entry.lineage = lineage
        if inner:
            entry.contained = inner
        self.resolve(entry, desc)
        self._maybe_free(object_id)

    def lost_on(self, node_id: bytes) -> list[tuple[bytes, int, Any]]:
        """Objects we own whose copy was in the store of ``node_id`` (now dead), with their size
        and the task that made each (None: not rebuildable). A copy in our own node's store is kept."""
        lost = []
        for oid, entry in snapshot(self._objects).items():
            desc = entry.desc
            if not entry.owned or desc is None or desc[0] != ser.STORED or len(desc) < 4 or desc[3] != node_id:
                continue
            if self.store.contains(oid):  # fetched here earlier: this copy serves
                entry.desc = [ser.STORED, oid, desc[2], self.links.node_id]
                continue
            lost.append((oid, int(desc[2]), entry.lineage))
        return lost

    def set_rebuilding(self, object_id: bytes) -> None:
        """A lost object is being found or made again: who asks for it now waits for the new copy."""
        entry = self._objects.get(object_id)
        if entry is not None:
            entry.desc, entry.pending, entry.lineage = None, True, None

    def set_found(self, object_id: bytes, size: int, node_id: bytes, lineage: Any) -> None:
        """A lost object has another copy on ``node_id``: that one serves from now on."""
        entry = self._objects.get(object_id)
        if entry is not None:
            entry.pending, entry.lineage = False, lineage
            self.resolve(entry, [ser.STORED, object_id, size, node_id])

    def set_lost(self, object_id: bytes, error: Exception) -> None:
        """A lost object that cannot be rebuilt: who asks for it gets ``error``."""
        entry = self._objects.get(object_id)
        if entry is not None:
            entry.lineage = None
            self.resolve(entry, ser.error_descriptor(error))

    def refs(self, pairs: list[list[Any]]) -> list[ObjectRef[Any]]:
        """Refs for ``[object_id, owner]`` pairs (refs found inside a result)."""
        return [ObjectRef(oid, owner, self) for oid, owner in pairs]

    def descriptor(self, object_id: bytes) -> list[Any] | None:
        """The value descriptor of a ready object known here, else None (any thread)."""
        entry = self._objects.get(object_id)
        return entry.desc if entry is not None else None

    def owns_any(self) -> bool:
        """True while this process owns objects (others may still need it to serve them)."""
        return any(e.owned for e in snapshot(self._objects).values())

    def __len__(self) -> int:
        return len(self._objects)

    def stored_report(self, limit: int) -> list[list[Any]]:
        """What this process owns in shared memory: ``[id, size, local refs, borrowers]``."""
        stored = []
        refcounts = self._refcounts
        for oid, entry in snapshot(self._objects).items():
            desc = entry.desc
            if entry.owned and desc is not None and desc[0] == ser.STORED:
                borrowers = len(entry.borrowers) if entry.borrowers else 0
                stored.append([oid, int(desc[2]), refcounts.get(oid, 0), borrowers])
                if len(stored) >= limit:
                    break
        return stored

    def fail_unresolved(self, desc: list[Any]) -> None:
        """The core stops: everything still waited for gets ``desc`` (an error)."""
        for entry in snapshot(self._objects).values():
            if entry.desc is None:
                self.resolve(entry, desc)

    def put_serialized(self, value: Any, pickled: tuple[bytes, list[Any]]) -> ObjectRef[Any]:
        """Store an already pickled value (inline when small, else in the node's store)."""
        object_id = _ids.new_id()
        desc = ser.make_descriptor(value, self.store, object_id, already=pickled)
        self._objects[object_id] = _Entry(owned=True, desc=desc)
        return ObjectRef(object_id, self.links.address, self)

    def entry_for(self, ref: ObjectRef[Any]) -> _Entry:
        """The entry for a ref, fetching borrowed values from their owner (loop thread)."""
        entry = self._objects.get(ref.id)
        if entry is not None:
            return entry
        if ref.owner == self.links.address:
            entry = _Entry(owned=True, desc=ser.error_descriptor(ObjectLostError(f"object {ref.hex()} was freed")))
            return entry
        entry = _Entry(owned=False)
        self._objects[ref.id] = entry
        entry.fetching = True
        self.links.spawn(self._fetch(ref, entry), "fetch-borrowed")
        return entry

    async def _fetch(self, ref: ObjectRef[Any], entry: _Entry) -> None:
        try:
            conn = await self.links.peer(ref.owner)
            desc = await conn.request(m.GetObject(rid=0, object_id=ref.id))
        except (OSError, ConnectionLost, RemoteCallError) as exc:
            desc = ser.error_descriptor(
                ObjectLostError(f"object {ref.hex()} is lost: its owner at {ref.owner} cannot be reached ({exc})")
            )
        entry.fetching = False
        self.resolve(entry, desc)

    def resolve(self, entry: _Entry, desc: list[Any]) -> None:
        """Set an entry's outcome and call whoever waits for it (loop thread)."""
        entry.desc = desc
        waiters, entry.waiters = entry.waiters, []
        for cb in waiters:
            try:
                cb()
            except Exception:
                log.exception("object waiter failed")

    def when_ready(self, ref: ObjectRef[Any], cb: Callable[[], None]) -> None:
        """Call ``cb`` on the loop once the ref's value (or error) is known."""
        entry = self.entry_for(ref)
        if entry.desc is not None:
            cb()
        else:
            entry.waiters.append(cb)

    def is_ready(self, ref: ObjectRef[Any]) -> bool:
        """True when the value or error is known locally (any thread)."""
        entry = self._objects.get(ref.id)
        return entry is not None and entry.desc is not None

    def load(self, ref: ObjectRef[Any]) -> Any:
        """Deserialize a ready value in the calling thread; raise its error."""
        entry = self._objects.get(ref.id)
        if entry is None or entry.desc is None:
            raise ObjectLostError(f"object {ref.hex()} is not available here")
        desc = entry.desc
        if ser.is_remote(desc, self.store):
            if self.links.on_loop_thread():
                raise RuntimeError("a remote object must be localized (await core.localize) before loading on the loop")
            try:
                self.links.run_coroutine(self.localize([desc])).result(LOCALIZE_TIMEOUT_S)
            except concurrent.futures.TimeoutError:
                raise ObjectLostError(
                    f"object {ref.hex()} could not be copied to this node in {LOCALIZE_TIMEOUT_S:g} s"
                ) from None
        return ser.load_descriptor(desc, self.store)

    async def localize(self, descs: Iterable[list[Any]]) -> None:
        """Copy stored objects that live on other nodes into this node's store (loop thread).

        A copy that cannot be made leaves the object unreadable: loading it then raises
        ObjectLostError naming the node.
        """
        remote = [d for d in descs if ser.is_remote(d, self.store)]
        if not remote:
            return
        results = await asyncio.gather(
            *(self._fetch_copy(d) for d in remote),
            return_exceptions=True,
        )
        for desc, res in zip(remote, results, strict=True):
            if isinstance(res, BaseException):
                fresh = await self._recover_copy(desc)
                desc[:] = fresh if fresh is not None else ser.error_descriptor(
                    ObjectLostError(f"object {desc[1].hex()} is lost: {res}")
                )

    async def _recover_copy(self, desc: list[Any]) -> list[Any] | None:
        """The copy of an object we own could not be fetched (its node died mid-transfer, say):
        wait, bounded, for it to be found on another node or rebuilt (``rebuild_lost`` runs when
        the node's death is announced), retrying the copy meanwhile in case the failure passed.
        None for objects we do not own, or when nothing came of it in time."""
        entry = self._objects.get(desc[1])
        if entry is None:
            return None
        if not entry.owned:
            return await self._ask_owner_again(entry, desc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECOVER_WAIT_S
        while loop.time() < deadline and not self.links.closed:
            await asyncio.sleep(RECOVER_POLL_S)
            current = entry.desc
            if current is None:  # being found elsewhere or rebuilt
                continue
            try:
                if ser.is_remote(current, self.store):
                    await asyncio.wait_for(self._fetch_copy(current), max(0.1, deadline - loop.time()))
            except Exception as exc:
                log.debug("object %s: copy failed again (%s)", desc[1].hex(), exc)
                continue
            return current if current is not desc else list(desc)
        return None

    async def _ask_owner_again(self, entry: _Entry, desc: list[Any]) -> list[Any] | None:
        """A borrowed object's copy could not be fetched: its owner may have found or rebuilt it
        elsewhere since it told us where it was. Ask (bounded) until its answer moves on."""
        owner = self._borrowed_from.get(desc[1])
        if owner is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECOVER_WAIT_S
        while loop.time() < deadline and not self.links.closed:
            try:
                conn = await self.links.peer(owner)
                fresh: list[Any] = await asyncio.wait_for(
                    conn.request(m.GetObject(rid=0, object_id=desc[1])), max(0.1, deadline - loop.time()),
                )
            except (OSError, TimeoutError, ConnectionLost, RemoteCallError):
                return None
            if fresh[:4] != desc[:4]:  # moved, or failed for good: the owner's word stands
                try:
                    if ser.is_remote(fresh, self.store):
                        await asyncio.wait_for(self._fetch_copy(fresh), max(0.1, deadline - loop.time()))
                except Exception as exc:
                    log.debug("object %s: the owner's new copy failed too (%s)", desc[1].hex(), exc)
                else:
                    entry.desc = fresh
                    return fresh
            await asyncio.sleep(RECOVER_POLL_S * 5)  # the owner has not heard of the loss yet
        return None

    async def _fetch_copy(self, desc: list[Any]) -> Any:
        return await self.links.request_node(m.FetchObject(rid=0, object_id=desc[1], node_id=desc[3], size=int(desc[2])))

    def holds_error(self, ref: ObjectRef[Any]) -> bool:
        """True when a ready ref's outcome is an error."""
        entry = self._objects.get(ref.id)
        return entry is not None and entry.desc is not None and entry.desc[0] == ser.ERROR

    def needs_localizing(self, ref: ObjectRef[Any]) -> bool:
        """True when a ready ref's value sits on another node and is not copied here yet."""
        entry = self._objects.get(ref.id)
        return entry is not None and entry.desc is not None and ser.is_remote(entry.desc, self.store)

    async def localize_refs(self, refs: list[ObjectRef[Any]]) -> None:
        """``localize`` for ready refs, from any loop."""
        descs = [e.desc for r in refs if (e := self._objects.get(r.id)) is not None and e.desc is not None]
        if not any(ser.is_remote(d, self.store) for d in descs):
            return
        if asyncio.get_running_loop() is self.links.loop:
            await self.localize(descs)
        else:
            await asyncio.wrap_future(self.links.run_coroutine(self.localize(descs)))

    def reserve_space(self, size: int) -> dict[str, Any]:
        """Ask the node for room before writing a large object (blocking; any thread but the loop).

        On the loop thread (an ``async def`` task returning a large value) the write goes
        ahead unreserved: the node measures the store directly, so it is still counted.
        """
        links = self.links
        if links.on_loop_thread():
            return {}

        async def ask() -> Any:
            return await links.request_node(m.ReserveSpace(rid=0, size=size))

        try:
            return dict(links.run_coroutine(ask()).result(RESERVE_TIMEOUT_S))
        except Exception as exc:  # the node is busy or gone: write unreserved, as on the loop
            log.info("no reservation for %d bytes: %s", size, exc)
            return {}

    def announce_object(self, object_id: bytes, size: int) -> None:
        """Tell the node (and so the head's directory) that this node holds a new object."""
        links = self.links
        links.call_soon(links.send_node, m.ObjectLocation(object_id=object_id, node_id=links.node_id, size=size))

    def watch(self, refs: list[ObjectRef[Any]], need: int, done: Callable[[], None]) -> None:
        """On the loop: call ``done`` once ``need`` of ``refs`` are ready."""
        left = [need]
        if need <= 0:
            done()
            return

        def one() -> None:
            left[0] -= 1
            if left[0] == 0:
                done()

        for ref in refs:
            self.when_ready(ref, one)

    def block_until_ready(self, refs: list[ObjectRef[Any]], need: int, timeout: float | None, api: str) -> bool:
        """Block the calling (non-loop) thread until ``need`` refs are ready. False on timeout."""
        if sum(1 for r in refs if self.is_ready(r)) >= need:
            return True
        links = self.links
        if links.on_loop_thread():
            raise RuntimeError(
                f"asyncray.{api}() would block the event loop that runs asyncray itself; "
                f"use 'await asyncray.aio.{api}(...)' (or 'await ref') in async code"
            )
        event = threading.Event()
        entry = self._objects.get(refs[0].id) if len(refs) == 1 else None
        if entry is not None and entry.owned:
            # Fast path for get(f.remote()): register straight from this thread, no loop hop.
            # The loop sets ``desc`` before it takes the waiters list, so re-checking ``desc``
            # after appending closes the race (a late waiter is never lost).
            entry.waiters.append(event.set)
            if entry.desc is not None:
                event.set()
        else:
            links.call_soon(self.watch, refs, need, event.set)
        blocked = links.role == "worker"  # a blocked worker lends its CPU out (nested get)
        if blocked:
            links.call_soon(links.send_node, m.WorkerBlocked(worker_id=links.worker_id))
        try:
            return event.wait(timeout)
        finally:
            if blocked:
                links.call_soon(links.send_node, m.WorkerUnblocked(worker_id=links.worker_id))

    def ready_future(self, ref: ObjectRef[Any]) -> asyncio.Future[None]:
        """A future on the *calling* loop that completes when the ref is ready."""
        caller = asyncio.get_running_loop()
        fut: asyncio.Future[None] = caller.create_future()
        if caller is self.links.loop:
            self.when_ready(ref, functools.partial(_settle, fut))
        else:
            bridge = self._bridges.get(caller)
            if bridge is None or bridge.caller.is_closed():
                bridge = self._bridges[caller] = _LoopBridge(self, caller)
            bridge.register(ref, fut)
        return fut

    async def get_async(self, refs: list[ObjectRef[Any]], timeout: float | None, *, single: bool = False) -> Any:
        """Await the values of refs (one value when ``single``)."""
        pending = [self.ready_future(r) for r in refs if not self.is_ready(r)]
        if pending and timeout is None:
            for fut in pending:
                await fut
        elif pending:
            _, not_done = await asyncio.wait(pending, timeout=timeout)
            if not_done:
                for f in not_done:
                    f.cancel()
                raise GetTimeoutError(f"get() timed out after {timeout} s with {len(not_done)} of {len(refs)} refs not ready")
        await self.localize_refs(refs)
        if single:
            return self.load(refs[0])
        return [self.load(r) for r in refs]

    async def wait_async(
        self, refs: list[ObjectRef[Any]], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef[Any]], list[ObjectRef[Any]]]:
        """Return (ready, not_ready) in input order once ``num_returns`` are ready or time is up."""
        if sum(1 for r in refs if self.is_ready(r)) < num_returns:
            caller = asyncio.get_running_loop()
            done_fut: asyncio.Future[None] = caller.create_future()

            def done() -> None:
                if caller is self.links.loop:
                    _settle(done_fut)
                else:
                    caller.call_soon_threadsafe(_settle, done_fut)

            self.links.call_soon(self.watch, refs, num_returns, done)
            try:
                await asyncio.wait_for(asyncio.shield(done_fut), timeout)
            except TimeoutError:
                pass
        return self.split_ready(refs, num_returns)

    def split_ready(self, refs: list[ObjectRef[Any]], num_returns: int) -> tuple[list[ObjectRef[Any]], list[ObjectRef[Any]]]:
        """Partition refs into the first ``num_returns`` ready ones and the rest, input order kept."""
        ready: list[ObjectRef[Any]] = []
        rest: list[ObjectRef[Any]] = []
        for r in refs:
            if len(ready) < num_returns and self.is_ready(r):
                ready.append(r)
            else:
                rest.append(r)
        return ready, rest

    def concurrent_future(self, ref: ObjectRef[Any]) -> concurrent.futures.Future[Any]:
        """A thread-safe future for the ref's value."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def settle() -> None:
            try:
                fut.set_result(self.load(ref))
            except BaseException as exc:
                fut.set_exception(exc)

        self.links.call_soon(self.when_ready, ref, settle)
        return fut

    def serve_object(self, conn: Connection, msg: m.GetObject) -> None:
        """A borrower asks for the value of an object we own (answered once it is ready)."""
        entry = self._objects.get(msg.object_id)
        if entry is None or not entry.owned:
            conn.reply(msg.rid, ser.error_descriptor(ObjectLostError(f"object {msg.object_id.hex()} was freed by its owner")))
            return
        def answer() -> None:
            conn.reply(msg.rid, entry.desc)

        if entry.desc is not None:
            answer()
        else:
            entry.waiters.append(answer)
