"""The per-process runtime core: the parts that own objects, tasks and actor calls, wired together.

Every driver and every worker has exactly one. The core holds the process's connections
(node, head, peers), its loop and the message dispatch; it owns its parts by composition and
gives each the same narrow interface (``CoreLinks``, which the core implements):

* ``objects`` (``objects.py``): entries, ref counts, borrowers, notices, waiting for values;
* ``tasks`` (``submit.py``): queues, leases, pipelining, retries of tasks;
* ``actors`` (``_actor/client.py``): one ordered channel per actor, actor deaths;
* ``reporter`` (``reports.py``): what the head learns about this process's tasks and objects.

Threading rule: the event loop thread owns all state transitions; other threads only (a)
create new entries for refs they mint, (b) read ``_Entry.desc`` (a single attribute read,
atomic under the GIL), and (c) queue work for the loop with one cheap wake-up per batch
(PERF-NOTES: 1.4 us, not a 31-68 us round trip).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from asyncray import _ids
from asyncray._actor.client import ActorClient
from asyncray._client import context
from asyncray._client.head_link import HeadLink
from asyncray._client.objects import ObjectTable, peer_address
from asyncray._client.reports import TaskReporter
from asyncray._client.submit import TaskSubmitter
from asyncray._service import Service
from asyncray._store import serialization as ser
from asyncray._store.shm import ObjectStore
from asyncray._wire import messages as m
from asyncray._wire.connection import (
    PEER_KEEPALIVE_S,
    Connection,
    ConnectionLost,
    connect,
    peer_timeout_s,
    serve,
)
from asyncray.exceptions import ObjectLostError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Core(Service):
    """The runtime of one process (driver or worker); implements ``CoreLinks`` for its parts."""

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
        head_lookup: str = "",
    ) -> None:
        super().__init__()
        self.name = f"{role} core"
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
        self.address = ""
        self.executor: Any = None  # set by the worker process
        self.on_node_lost: Callable[[], None] | None = None  # the worker exits then
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.node: Connection | None = None
        self._owner_prefix = _ids.new_id()[:8]  # the same on every head connection: our objects go with us
        self.head_link = HeadLink(
            head_address, lookup=head_lookup, role=role, token=token, peer_id=self.worker_id,
            handler=self._on_message, on_connect=self._hello_head, spawn=self.spawn,
        )
        self._server: asyncio.AbstractServer | None = None
        self._peers: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Future[Connection]] = {}
        self._incoming: set[Connection] = set()

        self.store = ObjectStore(store_dir, node_id=node_id, spill_dir=spill_dir)
        self.objects = ObjectTable(self, self.store)
        self.store.on_write = self.objects.announce_object
        self.store.reserve = self.objects.reserve_space
        self.tasks = TaskSubmitter(
            self, self.objects, self.store,
            route_actor_call=lambda spec: self.actors.dispatch(spec),
            cancel_actor_call=lambda spec, force: self.actors.cancel(spec, force),
        )
        self.actors = ActorClient(self, self.objects, self.tasks)
        self.reporter = TaskReporter(self, self.objects, self.tasks, self._actor_stats)

    async def _start(self) -> None:
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
        self.node.keep_alive(PEER_KEEPALIVE_S, peer_timeout_s())  # a frozen node fails what waits on it
        await self.head_link.open()
        if self.role == "driver" and self.log_to_driver:
            self.node.send(m.SubscribeLogs())
        self.supervise(self.reporter.run, "task report")

    async def _stop(self) -> None:
        """(Background tasks are cancelled by now.) Close every connection; fail whatever still waits."""
        if self.tasks.has_news():
            self.send_head(self.reporter.report())  # a driver that exits at once still shows its tasks
        self.tasks.stop()
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers.values()):
            peer.close()
        if self.node is not None:
            self.node.close()
        self.head_link.close()
        self.store.close()
        self.objects.fail_unresolved(
            ser.error_descriptor(ObjectLostError("the runtime was shut down before this object was ready"))
        )
        if self.address.startswith("unix:"):
            try:
                os.unlink(self.address[5:])
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ CoreLinks, for the parts
    @property
    def closed(self) -> bool:
        """True once the core is stopping."""
        return self._stopped

    def run_coroutine(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the core's loop from another thread; its future, for that thread.

        The one way from a user thread into the loop when a result is needed (``call_soon``
        is the fire-and-forget twin). On the loop thread itself this would deadlock: refused.
        """
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError("run_coroutine() was called on the core's own loop thread; await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def current_job_id(self) -> bytes:
        """The job of whatever runs now: the task's (or actor's) job in a worker, else this process's."""
        return context.current_job_id(self.job_id)

    def on_loop_thread(self) -> bool:
        """True when called from the thread that runs the core's loop."""
        return threading.get_ident() == self.loop_thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the core's loop from any thread."""
        if threading.get_ident() == self.loop_thread:
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def route_to(self, address: str) -> Connection | None:
        """An open connection to a peer: the one it opened to us first (keeps order with its
        tasks' replies), else one we opened."""
        for conn in self._incoming:
            if conn.peer is not None and conn.peer.address == address and conn.is_open:
                return conn
        opened = self._peers.get(address)
        return opened if opened is not None and opened.is_open else None

    def node_connection(self) -> Connection:
        """The connection to our node (ConnectionLost when it is down)."""
        if self.node is None or not self.node.is_open:
            raise ConnectionLost(f"the connection to this process's node at {self.node_address} is down")
        return self.node

    def send_node(self, msg: m.Message) -> bool:
        """Send to our node; False when that connection is down."""
        if self.node is not None and self.node.is_open:
            self.node.send(msg)
            return True
        return False

    @property
    def head(self) -> Connection | None:
        """The connection to the head now (None or closed while it is away)."""
        return self.head_link.conn

    def send_head(self, msg: m.Message) -> bool:
        """Send to the head; False while it is away."""
        return self.head_link.send(msg)

    def request_node(self, msg: m.Message) -> asyncio.Future[Any]:
        """A request to our node (ConnectionLost when the connection is down)."""
        return self.node_connection().request(msg)

    def request_head(self, msg: m.Message) -> asyncio.Future[Any]:
        """A request to the head; while the head is away it waits (bounded) for it to come back,
        then fails with ConnectionLost saying so."""
        return asyncio.ensure_future(self.head_link.request(msg))

    async def peer(self, address: str) -> Connection:
        """A connection to the process listening at ``address`` (one per peer, opened once)."""
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
        conn.keep_alive(PEER_KEEPALIVE_S, peer_timeout_s())  # a frozen peer is dropped, not waited on
        self._peers[address] = conn
        fut.set_result(conn)
        return conn

    def _on_peer_close(self, conn: Connection) -> None:
        self._incoming.discard(conn)
        if self._stopped:
            return
        for addr, c in list(self._peers.items()):
            if c is conn:
                del self._peers[addr]
        address = peer_address(conn)
        if address and self.route_to(address) is None:  # its last connection to us: it is gone
            self.objects.borrower_gone(address)
        self.objects.release_handoffs(conn)
        self.tasks.worker_lost(conn)
        self.actors.connection_lost(conn)
        if self.executor is not None:
            self.executor.connection_lost(conn)

    def _hello_head(self, conn: Connection) -> None:
        """What a (new) head learns first: the prefix of the objects we own."""
        conn.send(m.OwnerPrefix(prefix=self._owner_prefix))
        self.call_soon(self.objects.resend_freed)  # after the link counts as up

    def _on_node_close(self, conn: Connection) -> None:
        if not self._stopped and self.on_node_lost is not None:
            self.on_node_lost()

    def _on_message(self, conn: Connection, msg: m.Message) -> None:
        t = type(msg)
        if t is m.TaskDone:
            if self.actors.owns_task(msg.task_id):  # type: ignore[attr-defined]
                self.actors.on_task_done(msg)  # type: ignore[arg-type]
            else:
                self.tasks.on_task_done(msg)  # type: ignore[arg-type]
        elif t is m.PushTask or t is m.CancelTask or t is m.CreateActor:
            if self.executor is None:
                log.warning("%s got %s but runs no tasks", self.role, t.__name__)
                return
            self.executor.handle(conn, msg)
        elif t is m.Borrow:
            self.objects.on_borrow(conn, msg)  # type: ignore[arg-type]
        elif t is m.GetObject:
            self.objects.serve_object(conn, msg)  # type: ignore[arg-type]
        elif t is m.LogLines:
            self._print_logs(msg)  # type: ignore[arg-type]
        elif t is m.CancelObject:  # we own the object: cancel its task (the asker borrows the ref)
            self.tasks.on_cancel_request(msg)  # type: ignore[arg-type]
        elif t is m.ReclaimIdle:
            self.tasks.reclaim_idle()
        elif t is m.NodeDead:
            self._node_dead(msg)  # type: ignore[arg-type]
        else:
            log.warning("%s: unexpected %s", self.role, t.__name__)

    def _node_dead(self, msg: m.NodeDead) -> None:
        """A node died: what ran there for us is retried or fails now, not when TCP notices.

        A silent (frozen) node keeps its sockets open; waiting for them to close would wait
        forever. Connections to its processes are aborted, so every request on them fails.
        """
        if msg.node_id == self.node_id:  # our own node (maybe frozen): what waits on it fails now
            if self.node is not None:
                self.node.abort()
            return
        self.tasks.node_died(msg.node_id, msg.cause)
        self.actors.node_died(msg.node_id)
        self.tasks.rebuild_lost(msg.node_id, msg.cause)

    def _actor_stats(self) -> dict[str, Any] | None:
        host = self.executor.actor_host if self.executor is not None else None
        return host.stats() if host is not None else None

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
