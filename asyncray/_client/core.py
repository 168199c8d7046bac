"""The per-process runtime core: owns objects, submits tasks on leased workers, serves borrowers.

Every driver and every worker has exactly one. Threading rule: the event loop thread owns
all state transitions; other threads only (a) create new entries for refs they mint,
(b) read ``_Entry.desc`` (a single attribute read, atomic under the GIL), and (c) queue work
for the loop with one cheap wake-up per batch (PERF-NOTES: 1.4 us, not a 31-68 us round trip).

The object half lives in ``objects.py`` and the task half in ``submit.py``; this module
holds the process's state, its connections and the message dispatch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from asyncray import _ids
from asyncray._client import context
from asyncray._client.objects import ObjectTable, _BorrowNotice, _Entry, _LoopBridge, peer_address
from asyncray._client.ref import ObjectRef
from asyncray._client.submit import RECLAIM_WINDOW_S, TaskSubmitter, _Lease, _SchedQueue
from asyncray._client.task_spec import TaskSpec
from asyncray._service import supervised
from asyncray._store import serialization as ser
from asyncray._store.shm import ObjectStore
from asyncray._threads import snapshot
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, connect, serve
from asyncray.exceptions import (
    ObjectLostError,
)

log = logging.getLogger(__name__)


class Core(ObjectTable, TaskSubmitter):
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
        self._borrow_out: dict[str, _BorrowNotice] = {}
        self._borrow_flush = False
        self._notice_lock = threading.Lock()  # borrow and free notices are queued from any thread
        self._incoming: set[Connection] = set()
        self._handoff: dict[bytes, list[tuple[Connection, ObjectRef]]] = {}
        self._finished_events: list[list[Any]] = []
        self._view: list[dict[str, Any]] = []
        self._view_at = 0.0
        self._bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

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
        self.head.send(m.OwnerPrefix(prefix=_ids.new_id()[:8]))  # our objects go with us
        if self.role == "driver" and self.log_to_driver:
            self.node.send(m.SubscribeLogs())
        self.spawn(supervised(f"{self.role} task report", self._report_loop, log))

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
        if self.store is not None:
            self.store.close()
        lost = ser.error_descriptor(ObjectLostError("the runtime was shut down before this object was ready"))
        for entry in snapshot(self._objects).values():
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
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closed:
            log.error("%s core: background task %s failed", self.role, task.get_name(), exc_info=task.exception())

    def current_job_id(self) -> bytes:
        """The job of whatever runs now: the task's (or actor's) job in a worker, else this process's."""
        task = context.current_task.get()
        return task.job_id if task is not None and task.job_id else self.job_id

    def on_loop_thread(self) -> bool:
        """True when called from the thread that runs the core's loop."""
        return threading.get_ident() == self.loop_thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the core's loop from any thread."""
        if threading.get_ident() == self.loop_thread:
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _route_to(self, address: str) -> Connection | None:
        """An open connection to a peer: the one it opened to us first (keeps order with its
        tasks' replies), else one we opened."""
        for conn in self._incoming:
            if conn.peer is not None and conn.peer.address == address and conn.is_open:
                return conn
        conn = self._peers.get(address)
        return conn if conn is not None and conn.is_open else None

    def _send_node(self, msg: m.Message) -> None:
        if self.node is not None and self.node.is_open:
            self.node.send(msg)

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
        address = peer_address(conn)
        if address and self._route_to(address) is None:  # its last connection to us: it is gone
            self._borrower_gone(address)
        self._release_handoffs(conn)
        self._worker_lost(conn)
        if self.executor is not None:
            self.executor.connection_lost(conn)

    def _on_node_close(self, conn: Connection) -> None:
        if not self._closed and self.on_node_lost is not None:
            self.on_node_lost()

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

    def _print_logs(self, msg: m.LogLines) -> None:
        for prefix, stream, text in msg.lines:
            out = sys.stderr if stream == "stderr" else sys.stdout
            try:
                out.write(f"{prefix} {text}\n")
                out.flush()
            except (ValueError, OSError):  # the driver's stream is closed
                return


def install(core: Core | None) -> None:
    """Make ``core`` the process's runtime (used by init/shutdown and the worker)."""
    context.set_core(core)
