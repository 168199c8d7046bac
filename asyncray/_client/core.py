"""The per-process runtime core: owns objects, submits tasks on leased workers, serves borrowers.

Every driver and every worker has exactly one. Threading rule: the event loop thread owns
all state transitions; other threads only (a) create new entries for refs they mint,
(b) read ``_Entry.desc`` (a single attribute read, atomic under the GIL), and (c) queue work
for the loop with one cheap wake-up per batch (PERF-NOTES: 1.4 us, not a 31-68 us round trip).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from asyncray import _ids
from asyncray._client import context
from asyncray._client.ref import ObjectRef
from asyncray._client.task_spec import FunctionDescriptor, TaskSpec, TaskState
from asyncray._store import serialization as ser
from asyncray._store.shm import ObjectStore
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, ConnectionLost, RemoteCallError, connect, serve
from asyncray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    SerializationError,
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

log = logging.getLogger(__name__)

# A lease nobody uses is given back after this long: long enough that a driver doing
# get(f.remote()) in a loop keeps its worker, short enough not to starve others.
IDLE_LEASE_S = 0.005
# After the node asks for idle leases back, leases that go idle are returned at once.
RECLAIM_WINDOW_S = 1.0
# At most this many lease requests in flight per resource shape.
MAX_LEASE_REQUESTS = 16
RESERVE_TIMEOUT_S = 60.0
# Task reports to the head (dashboard, state API): how often, and how much at most.
REPORT_INTERVAL_S = 1.0
MAX_EVENTS_PER_REPORT = 20_000
MAX_LIVE_IN_REPORT = 1000
# A node that is full may point a lease request to another node, at most this many times.
MAX_REDIRECTS = 3
# Tasks of a function known to run shorter than this are pipelined: up to PIPELINE_DEPTH sit
# on one leased worker, so it never idles for a round trip. Unknown or longer functions get
# one at a time, so a long task never holds up another behind it.
SHORT_TASK_S = 0.002
PIPELINE_DEPTH = 4
ASYNC_TASKS_PER_WORKER = 100
MIN_SAMPLES_TO_PIPELINE = 5


class _Entry:
    """One object this process knows: its descriptor once ready, and who waits for it."""

    __slots__ = ("borrowers", "contained", "desc", "fetching", "owned", "pinned", "waiters")

    def __init__(self, owned: bool, desc: list[Any] | None = None) -> None:
        self.desc = desc
        self.waiters: list[Callable[[], None]] = []
        self.owned = owned
        self.pinned = False
        self.fetching = False
        self.borrowers: dict[str, int] | None = None  # owner side: borrower address -> count
        self.contained: list[ObjectRef] | None = None  # refs inside this value, kept while it lives


class _Lease:
    __slots__ = (
        "address", "conn", "idle_since", "inflight", "lease_id", "node_conn", "node_id", "pid", "queue", "worker_id",
    )

    def __init__(self, grant: dict[str, Any], conn: Connection, queue: _SchedQueue, node_conn: Connection) -> None:
        self.node_conn = node_conn  # the node that granted it (maybe not ours: spillback)
        self.node_id: bytes = grant.get("node_id", b"")
        self.lease_id: int = grant["lease_id"]
        self.worker_id: bytes = grant["worker_id"]
        self.pid: int = grant["pid"]
        self.address: str = grant["address"]
        self.conn = conn
        self.queue = queue
        self.inflight = 0
        self.idle_since = 0.0


class _SchedQueue:
    """Ready tasks of one resource shape, and the leases that serve them."""

    __slots__ = ("idle", "requesting", "resources", "strategy", "tasks")

    def __init__(self, resources: dict[str, float], strategy: Any) -> None:
        self.resources = resources
        self.strategy = strategy
        self.tasks: deque[TaskSpec] = deque()
        self.idle: list[_Lease] = []
        self.requesting = 0


class _LoopBridge:
    """Readiness notices between the core's loop and another thread's loop, batched.

    ``await ref`` on a loop other than the core's costs two cross-thread wake-ups; with
    ``asyncio.gather`` over 10,000 refs they are batched: one wake-up per burst each way.
    """

    def __init__(self, core: Core, caller: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.caller = caller
        self._to_core: deque[tuple[ObjectRef, asyncio.Future[None]]] = deque()
        self._to_caller: deque[asyncio.Future[None]] = deque()
        self._core_wake = False
        self._caller_wake = False

    def register(self, ref: ObjectRef, fut: asyncio.Future[None]) -> None:
        """Caller's loop: ask to be told when ``ref`` is ready."""
        self._to_core.append((ref, fut))
        if not self._core_wake:
            self._core_wake = True
            self.core.loop.call_soon_threadsafe(self._drain_core)

    def _drain_core(self) -> None:
        self._core_wake = False
        queue = self._to_core
        while queue:
            ref, fut = queue.popleft()
            self.core._when_ready(ref, functools.partial(self._ready, fut))

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


class Core:
    """The runtime of one process (driver or worker)."""

    def __init__(
        self,
        *,
        role: str,
        node_address: str,
        head_address: str,
        session_dir: str,
        store_dir: str,
        node_id: bytes,
        token: str = "",
        worker_id: bytes | None = None,
        job_id: bytes | None = None,
        log_to_driver: bool = True,
        listen_host: str = "",
        namespace: str = "default",
        spill_dir: str = "",
    ) -> None:
        self.listen_host = listen_host
        self.namespace = namespace
        self.role = role
        self.node_address = node_address
        self.head_address = head_address
        self.session_dir = session_dir
        self.node_id = node_id
        self.token = token
        self.worker_id = worker_id or _ids.new_id()
        self.job_id = job_id or _ids.new_id()[:4]
        self.log_to_driver = log_to_driver
        self.store = ObjectStore(store_dir, node_id=node_id, spill_dir=spill_dir)
        self.store.on_write = self._announce_object
        self.store.reserve = self._reserve_space
        self.address = ""
        self.executor: Any = None  # set by the worker process
        self.on_node_lost: Callable[[], None] | None = None  # the worker exits then
        from asyncray._actor.client import ActorClient

        self.actors = ActorClient(self)
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.node: Connection | None = None
        self.head: Connection | None = None
        self._server: asyncio.AbstractServer | None = None
        self._objects: dict[bytes, _Entry] = {}
        self._refcounts: dict[bytes, int] = {}
        self._inbox: deque[TaskSpec] = deque()
        self._wake_pending = False
        self._queues: dict[tuple[Any, ...], _SchedQueue] = {}
        self._running: dict[bytes, tuple[TaskSpec, _Lease]] = {}
        self._by_return: dict[bytes, TaskSpec] = {}
        self._peers: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Future[Connection]] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._reclaim_until = 0.0
        self._spread_next = 0
        self._live: dict[bytes, TaskSpec] = {}
        self._borrowed_from: dict[bytes, str] = {}
        self._borrow_out: dict[str, tuple[list[bytes], list[bytes]]] = {}
        self._borrow_flush = False
        self._incoming: set[Connection] = set()
        self._finished_events: list[list[Any]] = []
        self._view: list[dict[str, Any]] = []
        self._view_at = 0.0
        self._bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ================================================================ lifecycle
    async def start(self) -> None:
        """Listen for peers and connect to the node and head."""
        if self.listen_host:  # a cluster: peers on other machines must reach us over TCP
            listen = f"{self.listen_host}:0"
        else:
            path = os.path.join(self.session_dir, "sockets", f"{self.role}-{_ids.short(self.worker_id)}.sock")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            listen = f"unix:{path}"
        self._server, self.address = await serve(
            listen, self._on_message, token=self.token, name=f"{self.role}-core",
            on_open=self._incoming.add, on_close=self._on_peer_close,
        )
        self.node = await connect(
            self.node_address, self._on_message, role=self.role, token=self.token,
            peer_id=self.worker_id, name=f"{self.role}->node", on_close=self._on_node_close,
        )
        self.head = await connect(
            self.head_address, self._on_message, role=self.role, token=self.token,
            peer_id=self.worker_id, name=f"{self.role}->head",
        )
        if self.role == "driver" and self.log_to_driver:
            self.node.send(m.SubscribeLogs())
        self.spawn(self._report_loop())

    async def _report_loop(self) -> None:
        """Tell the head about this process's tasks and objects, about once a second."""
        quiet = True
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if self.head is None or not self.head.is_open:
                continue
            if quiet and not self._live and not self._finished_events:
                continue  # nothing new since an empty report
            quiet = not self._live and not self._finished_events
            self.head.send(self._task_report())

    def _task_report(self) -> m.TaskEvents:
        counts: dict[str, dict[str, int]] = {}
        live = []
        for spec in list(self._live.values()):
            state = spec.state.name
            by_state = counts.setdefault(spec.fn.name, {})
            by_state[state] = by_state.get(state, 0) + 1
            if len(live) < MAX_LIVE_IN_REPORT:
                live.append([spec.task_id, spec.fn.name, state, spec.worker_pid, spec.node_id,
                             spec.submitted_at, spec.started_at])
        finished, self._finished_events = self._finished_events, []
        n_objects = len(self._objects)
        return m.TaskEvents(
            owner=self.worker_id, pid=os.getpid(), role=self.role, counts=counts, live=live, finished=finished,
            objects=[n_objects, 0],
        )

    async def stop(self) -> None:
        """Close every connection; fail whatever still waits."""
        if self._closed:
            return
        self._closed = True
        if self.head is not None and self.head.is_open and (self._live or self._finished_events):
            self.head.send(self._task_report())  # a driver that exits at once still shows its tasks
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for conn in list(self._peers.values()):
            conn.close()
        for conn in (self.node, self.head):
            if conn is not None:
                conn.close()
        lost = ser.error_descriptor(ObjectLostError("the runtime was shut down before this object was ready"))
        for entry in list(self._objects.values()):
            if entry.desc is None:
                self._resolve_entry(entry, lost)
        if self.address.startswith("unix:"):
            try:
                os.unlink(self.address[5:])
            except FileNotFoundError:
                pass

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a coroutine owned by the core (cancelled at stop)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_loop_thread(self) -> bool:
        """True when called from the thread that runs the core's loop."""
        return threading.get_ident() == self.loop_thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the core's loop from any thread."""
        if threading.get_ident() == self.loop_thread:
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    # ================================================================ reference counting
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
        if entry.owned and object_id in self._by_return:
            return  # the task is still running; its result frees itself on arrival
        self._objects.pop(object_id, None)
        entry.contained = None
        desc = entry.desc
        if entry.owned and desc is not None and desc[0] == ser.STORED:
            self.store.delete(object_id)

    def _queue_borrow(self, owner: str, object_id: bytes, add: bool) -> None:
        """Batch borrower notices per owner; one frame per owner per loop iteration."""
        pending = self._borrow_out.get(owner)
        if pending is None:
            pending = self._borrow_out[owner] = ([], [])
        pending[0 if add else 1].append(object_id)
        if not self._borrow_flush:
            self._borrow_flush = True
            self.call_soon(self._flush_borrows)

    def _flush_borrows(self) -> None:
        self._borrow_flush = False
        out, self._borrow_out = self._borrow_out, {}
        for owner, (add, drop) in out.items():
            conn = self._route_to(owner)
            if conn is not None:
                conn.send(m.Borrow(add=add, drop=drop))
            elif not self._closed:
                self.spawn(self._send_borrow_later(owner, m.Borrow(add=add, drop=drop)))

    def _route_to(self, address: str) -> Connection | None:
        """An open connection to a peer: the one it opened to us first (keeps order with its
        tasks' replies), else one we opened."""
        for conn in self._incoming:
            if conn.peer is not None and conn.peer.address == address and conn.is_open:
                return conn
        conn = self._peers.get(address)
        return conn if conn is not None and conn.is_open else None

    async def _send_borrow_later(self, owner: str, msg: m.Borrow) -> None:
        try:
            (await self._peer(owner)).send(msg)
        except OSError:
            pass  # the owner is gone, and its objects with it

    def _on_borrow(self, conn: Connection, msg: m.Borrow) -> None:
        """Owner side: a borrower started or stopped holding refs to our objects."""
        who = conn.peer.address if conn.peer is not None else ""
        for oid in msg.add:
            entry = self._objects.get(oid)
            if entry is not None and entry.owned:
                if entry.borrowers is None:
                    entry.borrowers = {}
                entry.borrowers[who] = entry.borrowers.get(who, 0) + 1
        for oid in msg.drop:
            entry = self._objects.get(oid)
            if entry is not None and entry.borrowers and who in entry.borrowers:
                entry.borrowers[who] -= 1
                if entry.borrowers[who] <= 0:
                    del entry.borrowers[who]
                self._maybe_free(oid)

    def _borrower_gone(self, address: str) -> None:
        """A borrower's process is gone: it holds nothing any more."""
        for oid, entry in list(self._objects.items()):
            if entry.borrowers and address in entry.borrowers:
                del entry.borrowers[address]
                self._maybe_free(oid)

    def ref_escaped(self, object_id: bytes) -> None:
        """A ref was pickled (into an argument or a value): keep the object while borrowers may use it.

        Borrower tracking is not distributed yet, so an escaped object stays pinned
        until shutdown.
        """
        entry = self._objects.get(object_id)
        if entry is not None:
            entry.pinned = True

    # ================================================================ objects
    def put(self, value: Any) -> ObjectRef:
        """Store a value owned by this process (callable from any thread)."""
        contained: list[ObjectRef] = []
        try:
            with ser.collecting_refs(contained):
                pickled = ser.dumps(value)
        except Exception as exc:
            raise SerializationError(f"put() could not pickle a {type(value).__name__}: {exc}") from exc
        ref = self.put_serialized(value, pickled)
        if contained:  # refs inside a stored value live as long as it does
            self._objects[ref.id].contained = contained
        return ref

    def put_serialized(self, value: Any, pickled: tuple[bytes, list[Any]]) -> ObjectRef:
        """Store an already pickled value (inline when small, else in the node's store)."""
        object_id = _ids.new_id()
        desc = ser.make_descriptor(value, self.store, object_id, already=pickled)
        self._objects[object_id] = _Entry(owned=True, desc=desc)
        return ObjectRef(object_id, self.address, self)

    def _entry_for(self, ref: ObjectRef) -> _Entry:
        """The entry for a ref, fetching borrowed values from their owner (loop thread)."""
        entry = self._objects.get(ref.id)
        if entry is not None:
            return entry
        if ref.owner == self.address:
            entry = _Entry(owned=True, desc=ser.error_descriptor(ObjectLostError(f"object {ref.hex()} was freed")))
            return entry
        entry = _Entry(owned=False)
        self._objects[ref.id] = entry
        entry.fetching = True
        self.spawn(self._fetch(ref, entry))
        return entry

    async def _fetch(self, ref: ObjectRef, entry: _Entry) -> None:
        try:
            conn = await self._peer(ref.owner)
            desc = await conn.request(m.GetObject(rid=0, object_id=ref.id))
        except (OSError, ConnectionLost, RemoteCallError) as exc:
            desc = ser.error_descriptor(
                ObjectLostError(f"object {ref.hex()} is lost: its owner at {ref.owner} cannot be reached ({exc})")
            )
        entry.fetching = False
        self._resolve_entry(entry, desc)

    def _resolve_entry(self, entry: _Entry, desc: list[Any]) -> None:
        entry.desc = desc
        waiters, entry.waiters = entry.waiters, []
        for cb in waiters:
            try:
                cb()
            except Exception:
                log.exception("object waiter failed")

    def _when_ready(self, ref: ObjectRef, cb: Callable[[], None]) -> None:
        """Call ``cb`` on the loop once the ref's value (or error) is known."""
        entry = self._entry_for(ref)
        if entry.desc is not None:
            cb()
        else:
            entry.waiters.append(cb)

    def is_ready(self, ref: ObjectRef) -> bool:
        """True when the value or error is known locally (any thread)."""
        entry = self._objects.get(ref.id)
        return entry is not None and entry.desc is not None

    def load(self, ref: ObjectRef) -> Any:
        """Deserialize a ready value in the calling thread; raise its error."""
        entry = self._objects.get(ref.id)
        if entry is None or entry.desc is None:
            raise ObjectLostError(f"object {ref.hex()} is not available here")
        desc = entry.desc
        if ser.is_remote(desc, self.store):
            if self.on_loop_thread():
                raise RuntimeError("a remote object must be localized (await core.localize) before loading on the loop")
            asyncio.run_coroutine_threadsafe(self.localize([desc]), self.loop).result()
        return ser.load_descriptor(desc, self.store)

    async def localize(self, descs: Iterable[list[Any]]) -> None:
        """Copy stored objects that live on other nodes into this node's store (loop thread).

        A copy that cannot be made leaves the object unreadable: loading it then raises
        ObjectLostError naming the node.
        """
        remote = [d for d in descs if ser.is_remote(d, self.store)]
        if not remote:
            return
        assert self.node is not None
        results = await asyncio.gather(
            *(self.node.request(m.FetchObject(rid=0, object_id=d[1], node_id=d[3])) for d in remote),
            return_exceptions=True,
        )
        for desc, res in zip(remote, results, strict=True):
            if isinstance(res, BaseException):
                err = ObjectLostError(f"object {desc[1].hex()} is lost: {res}")
                desc[:] = ser.error_descriptor(err)

    async def localize_refs(self, refs: list[ObjectRef]) -> None:
        """``localize`` for ready refs, from any loop."""
        descs = [e.desc for r in refs if (e := self._objects.get(r.id)) is not None and e.desc is not None]
        if not any(ser.is_remote(d, self.store) for d in descs):
            return
        if asyncio.get_running_loop() is self.loop:
            await self.localize(descs)
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.localize(descs), self.loop))

    def _reserve_space(self, size: int) -> dict[str, Any]:
        """Ask the node for room before writing a large object (blocking; any thread but the loop).

        On the loop thread (an ``async def`` task returning a large value) the write goes
        ahead unreserved: the node measures the store directly, so it is still counted.
        """
        if self.on_loop_thread() or self.node is None or not self.node.is_open:
            return {}
        node = self.node

        async def ask() -> Any:
            return await node.request(m.ReserveSpace(rid=0, size=size))

        try:
            return dict(asyncio.run_coroutine_threadsafe(ask(), self.loop).result(RESERVE_TIMEOUT_S))
        except Exception as exc:  # the node is busy or gone: write unreserved, as on the loop
            log.info("no reservation for %d bytes: %s", size, exc)
            return {}

    def _announce_object(self, object_id: bytes, size: int) -> None:
        """Tell the node (and so the head's directory) that this node holds a new object."""
        self.call_soon(self._send_node, m.ObjectLocation(object_id=object_id, node_id=self.node_id, size=size))

    # ================================================================ waiting
    def _watch(self, refs: list[ObjectRef], need: int, done: Callable[[], None]) -> None:
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
            self._when_ready(ref, one)

    def block_until_ready(self, refs: list[ObjectRef], need: int, timeout: float | None, api: str) -> bool:
        """Block the calling (non-loop) thread until ``need`` refs are ready. False on timeout."""
        if sum(1 for r in refs if self.is_ready(r)) >= need:
            return True
        if self.on_loop_thread():
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
            self.loop.call_soon_threadsafe(self._watch, refs, need, event.set)
        blocked = self.role == "worker" and self.node is not None
        if blocked:
            self.loop.call_soon_threadsafe(self._send_node, m.WorkerBlocked(worker_id=self.worker_id))
        try:
            return event.wait(timeout)
        finally:
            if blocked:
                self.loop.call_soon_threadsafe(self._send_node, m.WorkerUnblocked(worker_id=self.worker_id))

    def _send_node(self, msg: m.Message) -> None:
        if self.node is not None and self.node.is_open:
            self.node.send(msg)

    def _ready_future(self, ref: ObjectRef) -> asyncio.Future[None]:
        """A future on the *calling* loop that completes when the ref is ready."""
        caller = asyncio.get_running_loop()
        fut: asyncio.Future[None] = caller.create_future()
        if caller is self.loop:
            self._when_ready(ref, lambda: fut.done() or fut.set_result(None))
        else:
            bridge = self._bridges.get(caller)
            if bridge is None or bridge.caller.is_closed():
                bridge = self._bridges[caller] = _LoopBridge(self, caller)
            bridge.register(ref, fut)
        return fut

    async def get_async(self, refs: list[ObjectRef], timeout: float | None, *, single: bool = False) -> Any:
        """Await the values of refs (one value when ``single``)."""
        pending = [self._ready_future(r) for r in refs if not self.is_ready(r)]
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
        self, refs: list[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """Return (ready, not_ready) in input order once ``num_returns`` are ready or time is up."""
        if sum(1 for r in refs if self.is_ready(r)) < num_returns:
            caller = asyncio.get_running_loop()
            done_fut: asyncio.Future[None] = caller.create_future()

            def done() -> None:
                if caller is self.loop:
                    done_fut.done() or done_fut.set_result(None)
                else:
                    caller.call_soon_threadsafe(lambda: done_fut.done() or done_fut.set_result(None))

            self.call_soon(self._watch, refs, num_returns, done)
            try:
                await asyncio.wait_for(asyncio.shield(done_fut), timeout)
            except TimeoutError:
                pass
        return self.split_ready(refs, num_returns)

    def split_ready(self, refs: list[ObjectRef], num_returns: int) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """Partition refs into the first ``num_returns`` ready ones and the rest, input order kept."""
        ready: list[ObjectRef] = []
        rest: list[ObjectRef] = []
        for r in refs:
            if len(ready) < num_returns and self.is_ready(r):
                ready.append(r)
            else:
                rest.append(r)
        return ready, rest

    def concurrent_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        """A thread-safe future for the ref's value."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def settle() -> None:
            try:
                fut.set_result(self.load(ref))
            except BaseException as exc:
                fut.set_exception(exc)

        self.call_soon(self._when_ready, ref, settle)
        return fut

    # ================================================================ submitting tasks
    def submit(self, spec: TaskSpec) -> list[ObjectRef]:
        """Queue a task (any thread); returns its refs at once."""
        spec.submitted_at = time.time()
        self._live[spec.task_id] = spec
        refs = []
        for rid in spec.return_ids:
            self._objects[rid] = _Entry(owned=True)
            self._by_return[rid] = spec
            refs.append(ObjectRef(rid, self.address, self))
        self._inbox.append(spec)
        if not self._wake_pending:
            self._wake_pending = True
            self.call_soon(self._drain)
        return refs

    def _drain(self) -> None:
        self._wake_pending = False
        inbox = self._inbox
        while inbox:
            spec = inbox.popleft()
            if spec.cancelled:
                self._abandon(spec)
                continue
            self._resolve_dependencies(spec)

    def _resolve_dependencies(self, spec: TaskSpec) -> None:
        deps = spec.deps
        if not deps:
            self._dispatch(spec)
            return
        spec.state = TaskState.WAITING_FOR_DEPS
        spec.pending_deps = len(deps)

        def one() -> None:
            spec.pending_deps -= 1
            if spec.pending_deps == 0:
                self._dispatch(spec)

        for ref in deps:
            self._when_ready(ref, one)

    def _dispatch(self, spec: TaskSpec) -> None:
        """Dependencies are ready: fill them into the arguments and queue the task."""
        if spec.cancelled:
            self._abandon(spec)
            return
        if spec.deps:
            descs = {ref.id: self._entry_for(ref).desc for ref in spec.deps}
            for desc in descs.values():
                if desc is not None and desc[0] == ser.ERROR:
                    # An upstream failure fails this task too, with the same error (as Ray).
                    self._finish(spec, [desc] * len(spec.return_ids))
                    self._abandon(spec)
                    return
            spec.args = [descs[a[1]] if a[0] == ser.REF else a for a in spec.args]
            spec.kwargs = {k: descs[a[1]] if a[0] == ser.REF else a for k, a in spec.kwargs.items()}
        if spec.actor is not None:
            self.actors.dispatch(spec)
            return
        key = spec.sched_key
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _SchedQueue(spec.resources, spec.strategy)
        spec.state = TaskState.QUEUED
        q.tasks.append(spec)
        self._pump(q)

    def _abandon(self, spec: TaskSpec) -> None:
        """A task that will not be sent: an actor call still frees its place in the order."""
        if spec.actor is not None:
            self.actors.dispatch(spec)

    def _pump(self, q: _SchedQueue) -> None:
        while q.tasks and q.idle:
            self._fill(q.idle.pop())
        want = len(q.tasks) - q.requesting
        while want > 0 and q.requesting < MAX_LEASE_REQUESTS:
            q.requesting += 1
            want -= 1
            self.spawn(self._request_lease(q))

    async def _request_lease(self, q: _SchedQueue) -> None:
        try:
            node_conn, label = await self._lease_target(q.strategy)
            grant = await node_conn.request(m.RequestLease(rid=0, resources=q.resources, label=label))
            for _ in range(MAX_REDIRECTS):  # spillback: that node is full, another is not
                if "redirect" not in grant:
                    break
                node_conn = await self._peer(grant["redirect"])
                grant = await node_conn.request(m.RequestLease(rid=0, resources=q.resources, label="affinity:redirected"))
        except (RemoteCallError, TaskUnschedulableError) as exc:
            q.requesting -= 1
            err = exc if isinstance(exc, TaskUnschedulableError) else TaskUnschedulableError(f"task cannot be scheduled: {exc}")
            self._fail_queue(q, err)
            return
        except (ConnectionLost, OSError):
            q.requesting -= 1
            self.loop.call_later(0.2, self._pump, q)  # the node went away; try again shortly
            return
        q.requesting -= 1
        if "redirect" in grant:
            self._pump(q)
            return
        try:
            conn = await self._peer(grant["address"])
        except OSError:
            node_conn.send(m.ReturnLease(lease_id=grant["lease_id"], kill=True))
            self._pump(q)
            return
        self._lease_free(_Lease(grant, conn, q, node_conn))

    async def _lease_target(self, strategy: Any) -> tuple[Connection, str]:
        """Which node to ask for a lease: ours, or the one a strategy names."""
        assert self.node is not None
        if strategy is None:
            return self.node, ""
        nodes = [n for n in await self.cluster_view() if n["alive"]]
        if strategy == "SPREAD":
            if not nodes:
                return self.node, ""
            self._spread_next += 1
            node = nodes[self._spread_next % len(nodes)]
            return await self._node_conn(node), "affinity:spread"
        target = next((n for n in nodes if n["node_id"].hex() == strategy.node_id), None)
        if target is None:
            if strategy.soft:
                return self.node, ""
            raise TaskUnschedulableError(
                f"node {strategy.node_id} (NodeAffinitySchedulingStrategy, soft=False) is dead or unknown"
            )
        return await self._node_conn(target), "affinity:hard" if not strategy.soft else "affinity:soft"

    async def _node_conn(self, node: dict[str, Any]) -> Connection:
        if node["node_id"] == self.node_id and self.node is not None:
            return self.node
        return await self._peer(node["address"])

    async def cluster_view(self) -> list[dict[str, Any]]:
        """The head's list of nodes, cached briefly."""
        now = time.monotonic()
        if now - self._view_at > 0.5:
            assert self.head is not None
            state = await self.head.request(m.GetClusterState(rid=0))
            self._view, self._view_at = state["nodes"], now
        return self._view

    def _fail_queue(self, q: _SchedQueue, exc: Exception) -> None:
        desc = ser.error_descriptor(exc)
        while q.tasks:
            spec = q.tasks.popleft()
            self._finish(spec, [desc] * len(spec.return_ids))

    def _fill(self, lease: _Lease) -> None:
        """Give a lease its next task, and more behind it while they are known to be short.

        ``async def`` tasks share their worker's event loop: up to ASYNC_TASKS_PER_WORKER of
        them run at once on one leased worker (they wait on I/O, not on the CPU).
        """
        tasks = lease.queue.tasks
        depth = 1 if lease.queue.strategy is not None else PIPELINE_DEPTH  # SPREAD means one each
        while tasks:
            nxt = tasks[0].fn
            short = nxt.samples >= MIN_SAMPLES_TO_PIPELINE and nxt.avg_s < SHORT_TASK_S
            if lease.inflight and not (
                (nxt.is_async and lease.inflight < ASYNC_TASKS_PER_WORKER and lease.queue.strategy is None)
                or (lease.inflight < depth and short)
            ):
                return
            self._push(lease, tasks.popleft())

    def _push(self, lease: _Lease, spec: TaskSpec) -> None:
        lease.inflight += 1
        spec.started_at = time.time()
        spec.node_id = lease.node_id
        spec.state = TaskState.RUNNING
        spec.worker_pid = lease.pid
        self._running[spec.task_id] = (spec, lease)
        lease.conn.send(self._push_message(lease.conn, spec))

    def _push_message(self, conn: Connection, spec: TaskSpec) -> m.PushTask:
        fn = spec.fn
        sent: set[bytes] = conn.state.setdefault("fns", set())
        blob = None
        if fn.fn_id not in sent:
            sent.add(fn.fn_id)
            blob = fn.blob
        return m.PushTask(
            task_id=spec.task_id, fn_id=fn.fn_id, name=fn.name, args=spec.args, kwargs=spec.kwargs,
            return_ids=spec.return_ids, owner=self.address, fn_blob=blob,
            actor_id=spec.actor.actor_id if spec.actor is not None else None,
            method=spec.method, seq=spec.seq, caller=self.worker_id,
        )

    def _lease_free(self, lease: _Lease) -> None:
        q = lease.queue
        if q.tasks:
            self._fill(lease)
            return
        if lease.inflight:
            return
        lease.idle_since = now = time.monotonic()
        if now < self._reclaim_until:
            self._return_lease(lease)
            return
        q.idle.append(lease)
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(IDLE_LEASE_S, self._sweep_idle_leases)

    def _return_lease(self, lease: _Lease) -> None:
        if lease.node_conn.is_open:
            lease.node_conn.send(m.ReturnLease(lease_id=lease.lease_id))

    def _sweep_idle_leases(self, *, all_of_them: bool = False) -> None:
        self._sweep_handle = None
        now = time.monotonic()
        keep_sweeping = False
        for q in self._queues.values():
            keep = []
            for lease in q.idle:
                if all_of_them or now - lease.idle_since >= IDLE_LEASE_S:
                    self._return_lease(lease)
                else:
                    keep.append(lease)
            q.idle = keep
            keep_sweeping = keep_sweeping or bool(keep)
        if keep_sweeping:
            self._sweep_handle = self.loop.call_later(IDLE_LEASE_S, self._sweep_idle_leases)

    def _on_task_done(self, msg: m.TaskDone) -> None:
        item = self._running.pop(msg.task_id, None)
        if item is None:
            return
        spec, lease = item
        lease.inflight -= 1
        spec.duration = msg.duration
        fn = spec.fn
        # The longest of the first few calls, then a running average: one quick first call
        # must not make a function look short (it would pipeline long calls behind each other).
        fn.samples += 1
        if fn.samples <= MIN_SAMPLES_TO_PIPELINE:
            fn.avg_s = max(fn.avg_s, msg.duration)
        else:
            fn.avg_s = 0.8 * fn.avg_s + 0.2 * msg.duration
        retry = msg.failed and spec.retry_exceptions and spec.attempt < spec.max_retries and not spec.cancelled
        if retry and self._retryable(spec, msg.results[0]):
            spec.attempt += 1
            self._requeue(spec)
            self._lease_free(lease)
            return
        self._finish(spec, msg.results)
        self._lease_free(lease)

    def _retryable(self, spec: TaskSpec, desc: list[Any]) -> bool:
        allowed = spec.retry_exceptions
        if allowed is True:
            return True
        try:
            ser.load_descriptor(desc, self.store)
        except BaseException as exc:
            return isinstance(exc, tuple(allowed))
        return False

    def _requeue(self, spec: TaskSpec) -> None:
        q = self._queues[spec.sched_key]
        q.tasks.appendleft(spec)
        self._pump(q)

    def _finish(self, spec: TaskSpec, results: list[Any]) -> None:
        """Record a task's outcome in its return entries and wake waiters."""
        spec.state = TaskState.FINISHED
        spec.deps = []
        spec.contained = []
        if self._live.pop(spec.task_id, None) is not None and len(self._finished_events) < MAX_EVENTS_PER_REPORT:
            failed = bool(results) and results[0][0] == ser.ERROR
            end = time.time()
            start = end - spec.duration if spec.duration else (spec.started_at or end)
            self._finished_events.append([
                spec.task_id, spec.fn.name, "FAILED" if failed else "FINISHED", spec.worker_pid, spec.node_id,
                spec.submitted_at, start, end, _error_summary(results[0]) if failed else "",
            ])
        for rid, desc in zip(spec.return_ids, results, strict=False):
            self._by_return.pop(rid, None)
            entry = self._objects.get(rid)
            if entry is None:
                if desc[0] == ser.STORED:
                    self.store.delete(rid)  # nobody holds a ref any more
                continue
            self._resolve_entry(entry, desc)
            self._maybe_free(rid)

    def _worker_lost(self, conn: Connection) -> None:
        """A leased worker's connection dropped: retry or fail what it was running."""
        for q in self._queues.values():
            q.idle = [lz for lz in q.idle if lz.conn is not conn]
        lost = [(s, lz) for s, lz in self._running.values() if lz.conn is conn]
        touched = set()
        for spec, lease in lost:
            self._running.pop(spec.task_id, None)
            touched.add(id(lease.queue))
            if spec.cancelled:
                self._finish(spec, [ser.error_descriptor(TaskCancelledError(f"task {spec.fn.name} was cancelled"))] * len(spec.return_ids))
            elif spec.attempt < spec.max_retries:
                spec.attempt += 1
                log.info("worker pid %d died running %s; retry %d of %d", lease.pid, spec.fn.name, spec.attempt, spec.max_retries)
                self._requeue(spec)
            else:
                err = WorkerCrashedError(
                    f"the worker process (pid {lease.pid}) running {spec.fn.name}() died unexpectedly"
                    f" and the task was tried {spec.attempt + 1} time(s) (max_retries={spec.max_retries})"
                )
                self._finish(spec, [ser.error_descriptor(err)] * len(spec.return_ids))
        self.actors.connection_lost(conn)

    # ================================================================ cancel
    def cancel(self, ref: ObjectRef, force: bool) -> None:
        """Cancel the task that makes ``ref`` (loop thread)."""
        spec = self._by_return.get(ref.id)
        if spec is None or spec.state is TaskState.FINISHED:
            return
        spec.cancelled = True
        err = [ser.error_descriptor(TaskCancelledError(f"task {spec.fn.name} was cancelled"))] * len(spec.return_ids)
        if spec.actor is not None and spec.state is TaskState.RUNNING:
            if self.actors.cancel(spec, force):
                return
        elif spec.state is TaskState.RUNNING:
            item = self._running.get(spec.task_id)
            if item is not None:
                item[1].conn.send(m.CancelTask(task_id=spec.task_id, force=force))
            return
        if spec.state is TaskState.QUEUED:
            q = self._queues.get(spec.sched_key)
            if q is not None and spec in q.tasks:
                q.tasks.remove(spec)
        self._finish(spec, err)

    # ================================================================ peers
    async def _peer(self, address: str) -> Connection:
        conn = self._peers.get(address)
        if conn is not None and conn.is_open:
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Connection] = self.loop.create_future()
        self._connecting[address] = fut
        try:
            conn = await connect(
                address, self._on_message, role=self.role, token=self.token, peer_id=self.worker_id,
                listen_address=self.address, name=f"{self.role}->{address}", on_close=self._on_peer_close,
            )
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._connecting.pop(address, None)
        self._peers[address] = conn
        fut.set_result(conn)
        return conn

    def _on_peer_close(self, conn: Connection) -> None:
        self._incoming.discard(conn)
        if self._closed:
            return
        for addr, c in list(self._peers.items()):
            if c is conn:
                del self._peers[addr]
        if conn.peer is not None and conn.peer.address:
            self._borrower_gone(conn.peer.address)
        self._worker_lost(conn)
        if self.executor is not None:
            self.executor.connection_lost(conn)

    def _on_node_close(self, conn: Connection) -> None:
        if not self._closed and self.on_node_lost is not None:
            self.on_node_lost()

    # ================================================================ incoming messages
    def _on_message(self, conn: Connection, msg: m.Message) -> None:
        t = type(msg)
        if t is m.TaskDone:
            if self.actors.owns_task(msg.task_id):  # type: ignore[attr-defined]
                self.actors.on_task_done(msg)
            else:
                self._on_task_done(msg)  # type: ignore[arg-type]
        elif t is m.PushTask or t is m.CancelTask or t is m.CreateActor:
            if self.executor is None:
                log.warning("%s got %s but runs no tasks", self.role, t.__name__)
                return
            self.executor.handle(conn, msg)
        elif t is m.Borrow:
            self._on_borrow(conn, msg)  # type: ignore[arg-type]
        elif t is m.GetObject:
            self._serve_object(conn, msg)  # type: ignore[arg-type]
        elif t is m.LogLines:
            self._print_logs(msg)  # type: ignore[arg-type]
        elif t is m.ReclaimIdle:
            self._reclaim_until = time.monotonic() + RECLAIM_WINDOW_S
            self._sweep_idle_leases(all_of_them=True)
        else:
            log.warning("%s: unexpected %s", self.role, t.__name__)

    def _serve_object(self, conn: Connection, msg: m.GetObject) -> None:
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

    def _print_logs(self, msg: m.LogLines) -> None:
        for prefix, stream, text in msg.lines:
            out = sys.stderr if stream == "stderr" else sys.stdout
            try:
                out.write(f"{prefix} {text}\n")
                out.flush()
            except (ValueError, OSError):  # the driver's stream is closed
                return

    # ================================================================ helpers for facades
    def make_spec(
        self,
        fn: FunctionDescriptor,
        args: Iterable[Any],
        kwargs: dict[str, Any],
        *,
        num_returns: int,
        resources: dict[str, float],
        max_retries: int,
        retry_exceptions: Any,
        strategy: Any = None,
    ) -> TaskSpec:
        """Pickle arguments in the caller's thread (errors name the argument) and build the spec."""
        from asyncray._client.task_spec import encode_args

        task_id = _ids.new_id()
        arg_descs, kw_descs, deps, contained = encode_args(self, fn.name, args, kwargs)
        return TaskSpec(contained=contained,
            task_id=task_id, fn=fn, args=arg_descs, kwargs=kw_descs, deps=deps,
            return_ids=[_ids.return_id(task_id, i) for i in range(num_returns)],
            resources=resources, max_retries=max_retries, retry_exceptions=retry_exceptions, strategy=strategy,
        )


def _error_summary(desc: list[Any]) -> str:
    """One line saying what an error descriptor holds (for task lists)."""
    try:
        ser.load_descriptor(desc, None)
    except BaseException as exc:
        cause = getattr(exc, "cause", None) or exc
        text = f"{type(cause).__name__}: {cause}"
        tb = getattr(exc, "traceback_text", "")
        return f"{text}\n{tb}" if tb else text
    return ""


def install(core: Core | None) -> None:
    """Make ``core`` the process's runtime (used by init/shutdown and the worker)."""
    context.set_core(core)
