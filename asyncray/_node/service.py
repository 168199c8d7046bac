"""The node service: carries out the local scheduler's actions over real processes and sockets."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from asyncray import _ids
from asyncray import _placement as placement
from asyncray._head.locate import locate_head
from asyncray._node import scheduler as sch
from asyncray._node import transfer
from asyncray._service import Service
from asyncray._store.manager import StoreManager
from asyncray._store.shm import LARGE_OBJECT_BYTES, ObjectStore
from asyncray._wire import messages as m
from asyncray._wire.connection import (
    HEAD_KEEPALIVE_S,
    Connection,
    ConnectionLost,
    RemoteCallError,
    connect,
    head_reconnect_timeout_s,
    head_timeout_s,
    serve,
)

log = logging.getLogger(__name__)

RESOURCE_REPORT_DELAY_S = 0.05
REAP_INTERVAL_S = 5.0
# A node reports to the head this often; the report doubles as its heartbeat.
HEARTBEAT_INTERVAL_S = 0.5
MAX_REDIRECTS = 3
# How often the node measures its store, refills the warm segment and sweeps stale files.
STORE_UPKEEP_S = 1.0
# Joining the head: one attempt's deadline, and the longest pause between attempts to rejoin.
JOIN_TIMEOUT_S = 5.0
REJOIN_BACKOFF_MAX_S = 1.0
# Warm segments go back to the OS after this long without a large write (idle footprint).
WARM_SEGMENT_IDLE_S = 30.0
# Two, so back-to-back large writes (a loop of puts, args passed by value) mostly find one.
WARM_SEGMENT_COUNT = 2


@dataclass
class NodeConfig:
    """Everything a node needs to know at start."""

    node_id: bytes
    address: str
    head_address: str
    resources: dict[str, float]
    session_dir: str
    store_dir: str
    num_workers: int
    token: str = ""
    worker_cwd: str = field(default_factory=os.getcwd)
    worker_path: list[str] = field(default_factory=list)
    listen_host: str = ""  # empty: workers listen on Unix sockets (one machine)
    spill_dir: str = ""  # empty: <session_dir>/spill
    head_lookup: str = ""  # where to look the head's address up again when it comes back ("auto", a storage URL)


def _open_log(path: str) -> Any:
    return open(path, "ab")  # a local tmp file: opening it does not block the loop noticeably


class NodeService(Service):
    """Local scheduler, worker pool, log forwarding; registers with the head."""

    name = "node"

    def __init__(self, config: NodeConfig) -> None:
        super().__init__()
        self.config = config
        self.node_id = config.node_id
        self.address = config.address
        config.spill_dir = config.spill_dir or os.path.join(config.session_dir, "spill")
        self.store = ObjectStore(config.store_dir, create=True, node_id=config.node_id, spill_dir=config.spill_dir)
        limit = int(config.resources.get("object_store_memory", 2**30))
        self.store_manager = StoreManager(self.store, limit)
        self.store_usage = self.store_manager.usage()
        # GPU ids as Ray numbers them: this process's own CUDA_VISIBLE_DEVICES when set, else 0..N-1.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.gpu_ids_from_env = bool(visible.strip())
        self.scheduler = sch.LocalScheduler(
            total=dict(config.resources), min_workers=config.num_workers, new_worker_id=_ids.new_id,
            gpu_ids=sch.node_gpu_ids(config.resources.get("GPU", 0.0), visible),
        )
        # A worker's standing question "which lease do I hold now?": worker id -> (its connection, rid).
        self._lease_watches: dict[bytes, tuple[Connection, int]] = {}
        self._watchers: set[bytes] = set()  # workers that follow their lease (they asked once)
        # Grants whose worker has not asked again yet (a lease came back and went out at once):
        # the holder hears of it only after the worker does, or it could push a task that runs
        # with the previous lease's GPUs. Worker id -> (holder, rid, grant).
        self._held_grants: dict[bytes, tuple[Connection, int, m.LeaseGrant]] = {}
        self._procs: dict[bytes, asyncio.subprocess.Process] = {}
        self._worker_conns: dict[bytes, Connection] = {}
        self._clients: set[Connection] = set()
        self._log_subscribers: set[Connection] = set()
        self._head: Connection | None = None
        self.fenced = asyncio.Event()  # set once the head declared this node dead: whoever runs it stops it
        self._report_scheduled = False
        self.log_dir = os.path.join(config.session_dir, "logs")
        self.view: list[m.NodeView] = []  # the head's latest picture of all nodes
        self._pulls: dict[bytes, asyncio.Future[None]] = {}
        self._pull_sources: dict[bytes, bytes] = {}  # object id -> the node a running pull copies from
        self._pull_ids = itertools.count()
        self.transfer: transfer.TransferServer | None = None
        self._refill: asyncio.Future[None] | None = None
        self._deletions: set[asyncio.Future[None]] = set()
        self._last_large_write = 0.0

    # ------------------------------------------------------------ lifecycle
    async def _start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        server, self.address = await serve(
            self.address, self._on_message, token=self.config.token, name="node", on_close=self._on_close
        )
        self._servers.append(server)
        if self.config.listen_host:  # a cluster node: others may pull objects from it
            self.transfer = transfer.TransferServer(self.config.listen_host, self.config.token, self._locate)
        await self._join(self.config.head_address)
        self._apply(self.scheduler.prestart())
        self.supervise(self._reap_loop, "reap-idle-workers")
        self.supervise(self._heartbeat_loop, "heartbeat")
        self.supervise(self._store_loop, "store-upkeep")

    async def _stop(self) -> None:
        if self.transfer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.transfer.stop)
        for conn in list(self._worker_conns.values()) + list(self._clients):
            conn.close()
        if self._head is not None:
            self._head.close()
        procs = list(self._procs.values())
        for proc in procs:
            if proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 2.0
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
        await asyncio.gather(*self._deletions, return_exceptions=True)
        self.store.destroy()

    async def _store_loop(self) -> None:
        """Measure the store, keep warm segments ready (or give them back when idle), sweep what crashed writers left."""
        loop = asyncio.get_running_loop()
        manager = self.store_manager
        while True:
            await asyncio.sleep(STORE_UPKEEP_S)
            idle = time.monotonic() - self._last_large_write > WARM_SEGMENT_IDLE_S
            if idle and (manager.segment_bytes or self.store_usage.segments):
                manager.segment_bytes = manager.segment_count = 0
                await loop.run_in_executor(None, manager.drop_segments)
            self._refill_segments()
            await loop.run_in_executor(None, manager.sweep_stale)
            self.store_usage = await loop.run_in_executor(None, manager.usage)

    def _delete_copies(self, object_ids: list[bytes]) -> None:
        """Delete copies of freed objects off the loop (a delete may recycle the file)."""
        if self._stopped:
            return
        fut = asyncio.get_running_loop().run_in_executor(None, self._delete_now, object_ids)
        self._deletions.add(fut)
        fut.add_done_callback(self._deletions.discard)

    def _delete_now(self, object_ids: list[bytes]) -> None:
        for oid in object_ids:
            if self._stopped:
                return  # the store directory is going away
            self.store.delete(oid)

    def _refill_segments(self) -> None:
        """Start refilling warm segments off the loop, unless a refill is already under way."""
        if self._stopped:
            return  # (the store directory is about to go: nothing may be created in it)
        if self._refill is None or self._refill.done():
            loop = asyncio.get_running_loop()
            self._refill = loop.run_in_executor(None, self.store_manager.refill_segments)

    async def _reserve(self, conn: Connection, msg: m.ReserveSpace) -> None:
        try:
            # A writer copies at 2-5 GB/s: refill when it is probably done.
            where = await self._make_room(msg.size, refill_after_s=0.01 + msg.size / 2e9)
        except Exception as exc:  # the writer waits for an answer: always give one
            log.warning("could not make room for %d bytes: %s", msg.size, exc)
            where = {}
        conn.reply(msg.rid, where)

    async def _make_room(self, size: int, *, refill_after_s: float | None = None) -> dict[str, Any]:
        """Reserve store space (spilling if needed); say where to write (see StoreManager.reserve).

        After a large reservation the warm segments are refilled, once the write has likely
        finished (``refill_after_s``; None: the caller refills): filling a segment while the
        writer fills its own would halve both (they compete for memory bandwidth).
        """
        manager = self.store_manager
        large = size >= LARGE_OBJECT_BYTES
        # Warm segments are sized by what writers actually ask for (none until a big write).
        if large:
            self._last_large_write = time.monotonic()
            want = 1 << (size - 1).bit_length()
            # Fresh segments only for sizes of which two fit in the spare budget (a quarter of
            # the store): larger ones would be made and trimmed again each turn. Freed objects
            # of any size are still recycled.
            if want > manager.segment_bytes and want * WARM_SEGMENT_COUNT <= manager.limit // 4:
                manager.segment_bytes, manager.segment_count = want, WARM_SEGMENT_COUNT
        where = await asyncio.get_running_loop().run_in_executor(None, manager.reserve, size)
        if large and refill_after_s is not None:  # the next large write should find warm memory too
            asyncio.get_running_loop().call_later(refill_after_s, self._refill_segments)
        return where

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            self._report_now()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            self._apply(self.scheduler.reap_idle(time.monotonic()))

    # ------------------------------------------------------------ actions
    def _apply(self, actions: list[sch.Action]) -> None:
        for act in actions:
            if isinstance(act, sch.Grant):
                wid = act.worker.worker_id
                grant = m.LeaseGrant(
                    lease_id=act.lease.lease_id, worker_id=wid, address=act.worker.address,
                    pid=act.worker.pid, node_id=self.node_id, gpu_ids=act.lease.gpu_ids,
                )
                if wid in self._watchers and wid not in self._lease_watches:
                    self._held_grants[wid] = (act.request.client, act.request.rid, grant)
                    continue
                # The worker hears of its GPUs first: what goes out in one loop turn is flushed in
                # order, so its node's answer is on its way before the holder can push it a task.
                self._tell_lease(wid)
                act.request.client.reply(act.request.rid, grant)
            elif isinstance(act, sch.Reject):
                act.request.client.reply(act.request.rid, error=f"unschedulable: {act.reason}")
            elif isinstance(act, sch.StartWorker):
                self.spawn(self._start_worker(act.worker_id), "start-worker")
            elif isinstance(act, sch.KillWorker):
                self._kill_worker(act.worker_id)
            elif isinstance(act, sch.Reclaim):
                for client in self._clients:
                    if client.is_open:
                        client.send(m.ReclaimIdle())
        self._schedule_report()

    def _watch_lease(self, conn: Connection, msg: m.GetNodeInfo) -> None:
        """A worker asks which lease it holds: answered now if not the one it knows, else at its next grant."""
        worker_id = conn.state.get("worker_id")
        if worker_id is None:
            conn.reply(msg.rid, error="only a worker of this node may watch its lease")
            return
        self._lease_watches[worker_id] = (conn, msg.rid)
        self._watchers.add(worker_id)
        rec = self.scheduler.workers.get(worker_id)
        if rec is not None and rec.lease_id and rec.lease_id != msg.lease_after:
            self._tell_lease(worker_id)
        self._release_grant(worker_id)

    def _release_grant(self, worker_id: bytes) -> None:
        """Send a grant held back for this worker (it knows its lease now, or is gone)."""
        held = self._held_grants.pop(worker_id, None)
        if held is not None:
            client, rid, grant = held
            client.reply(rid, grant)

    def _tell_lease(self, worker_id: bytes) -> None:
        """Answer the worker's watch (if it has one) with its lease and that lease's GPU ids."""
        watch = self._lease_watches.pop(worker_id, None)
        rec = self.scheduler.workers.get(worker_id)
        if watch is None or rec is None:
            return
        lease = self.scheduler.leases.get(rec.lease_id)
        conn, rid = watch
        conn.reply(rid, {"lease_id": rec.lease_id, "gpu_ids": lease.gpu_ids if lease is not None else []})

    def _schedule_report(self) -> None:
        if self._report_scheduled or self._head is None:
            return
        self._report_scheduled = True

        asyncio.get_running_loop().call_later(RESOURCE_REPORT_DELAY_S, self._report_now)

    def _report_now(self) -> None:
        self._report_scheduled = False
        if self._head is not None and self._head.is_open:
            avail = {k: max(0.0, v) for k, v in self.scheduler.available.items()}
            usage = self.store_usage
            avail["object_store_memory"] = float(max(0, usage.limit - usage.used))
            self._head.send(m.NodeResources(node_id=self.node_id, available=avail))

    async def _start_worker(self, worker_id: bytes) -> None:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")  # as Ray: a task has one CPU unless it asked for more
        env.update(
            ASYNCRAY_NODE_ADDRESS=self.address,
            ASYNCRAY_HEAD_ADDRESS=self.config.head_address,
            ASYNCRAY_HEAD_LOOKUP=self.config.head_lookup,
            ASYNCRAY_NODE_ID=self.node_id.hex(),
            ASYNCRAY_WORKER_ID=worker_id.hex(),
            ASYNCRAY_SESSION_DIR=self.config.session_dir,
            ASYNCRAY_STORE_DIR=self.config.store_dir,
            ASYNCRAY_SPILL_DIR=self.config.spill_dir,
            ASYNCRAY_TOKEN=self.config.token,
            ASYNCRAY_NODE_PID=str(os.getpid()),
            ASYNCRAY_LISTEN_HOST=self.config.listen_host,
            # Non-empty: the worker follows its lease's GPU ids (and sets CUDA_VISIBLE_DEVICES).
            ASYNCRAY_GPU_IDS=",".join(self.scheduler.gpu_ids or []),
            ASYNCRAY_GPU_IDS_FROM_ENV="1" if self.gpu_ids_from_env else "",
        )
        if self.config.worker_path:
            env["PYTHONPATH"] = os.pathsep.join(self.config.worker_path)
        logfile = os.path.join(self.log_dir, f"worker-{_ids.short(worker_id)}.log")
        with _open_log(logfile) as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncray._worker",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                cwd=self.config.worker_cwd, env=env, start_new_session=True,
            )
        self._procs[worker_id] = proc
        rec = self.scheduler.workers.get(worker_id)
        if rec is not None:
            rec.pid = proc.pid
        self.spawn(self._watch(worker_id, proc), "watch-worker")

    async def _watch(self, worker_id: bytes, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._procs.pop(worker_id, None)
        if self._head is not None and self._head.is_open:
            self._head.send(m.WorkerExited(worker_id=worker_id, exit_code=code))
        if not self._stopped:
            if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                log.info("worker %s (pid %d) exited with %s", _ids.short(worker_id), proc.pid, code)
            self._apply(self.scheduler.worker_died(worker_id))

    async def _join(self, address: str, rejoin: bool = False) -> None:
        """Connect to the head and register (again, after it restarted: with what we kept for it)."""
        conn = await asyncio.wait_for(connect(
            address, self._on_head_message, role="node", token=self.config.token,
            peer_id=self.node_id, name="node->head", on_close=self._on_head_close,
        ), JOIN_TIMEOUT_S)
        conn.keep_alive(HEAD_KEEPALIVE_S, head_timeout_s())
        info = {
            "pid": os.getpid(), "store_dir": self.config.store_dir, "spill_dir": self.config.spill_dir,
            "hostname": os.uname().nodename, "transfer": self.transfer.address if self.transfer else "",
        }
        held = self.scheduler.orphaned_leases() if rejoin else []
        try:
            await asyncio.wait_for(conn.request(m.RegisterNode(
                rid=0, node_id=self.node_id, address=self.address, resources=self.config.resources, info=info,
                held=held,
            )), JOIN_TIMEOUT_S)
        except BaseException:
            conn.abort()
            raise
        self._head = conn
        self.config.head_address = address
        if rejoin:  # the new head's object directory learns what we hold
            for oid in self.store.ids_with_prefix(b""):
                try:
                    size = os.stat(self.store.path(oid)).st_size
                except OSError:
                    size = 0
                conn.send(m.ObjectLocation(object_id=oid, node_id=self.node_id, size=size))
            self._report_now()

    def _on_head_close(self, conn: Connection) -> None:
        if conn is not self._head or self._stopped or self.fenced.is_set():
            return
        log.warning("node %s lost the head at %s; its workers go on with what they run, and it rejoins"
                    " when the head is back", _ids.short(self.node_id), self.config.head_address)
        self.spawn(self._rejoin(), "rejoin-head")

    async def _rejoin(self) -> None:
        """Reconnect with backoff until the head is back; fenced (with every worker) past the deadline."""
        give_up = time.monotonic() + head_reconnect_timeout_s()
        delay = 0.05
        while not self._stopped:
            try:
                address = await locate_head(self.config.head_lookup or self.config.head_address)
                await self._join(address, rejoin=True)
            except RemoteCallError as exc:
                if "declared dead" in str(exc):  # the head refuses us for good: it declared this node dead
                    self._fence(str(exc))
                    return
                if time.monotonic() > give_up:
                    self._fence(f"the head at {self.config.head_address} did not take this node back for"
                                f" {head_reconnect_timeout_s():g} s (last: {exc})")
                    return
                log.warning("node %s: the head did not take it back yet (%s); trying again", _ids.short(self.node_id), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REJOIN_BACKOFF_MAX_S)
                continue
            except (OSError, TimeoutError, ConnectionLost) as exc:
                if time.monotonic() > give_up:
                    self._fence(f"the head at {self.config.head_address} was unreachable for"
                                f" {head_reconnect_timeout_s():g} s (last: {exc})")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, REJOIN_BACKOFF_MAX_S)
                continue
            log.info("node %s rejoined the head at %s", _ids.short(self.node_id), address)
            return

    def _forward_logs(self, msg: m.LogLines) -> None:
        """Worker output to each subscribed driver; a driver that does not keep up loses lines
        (counted, and told how many) rather than making the node buffer without end."""
        for sub in self._log_subscribers:
            if not sub.is_open:
                continue
            if sub.is_backed_up():
                sub.state["dropped_lines"] = sub.state.get("dropped_lines", 0) + len(msg.lines)
                continue
            dropped = sub.state.pop("dropped_lines", 0)
            if dropped:
                note = ["(asyncray)", "stderr", f"{dropped} lines of worker output were dropped: this driver read too slowly"]
                sub.send(m.LogLines(worker_id=msg.worker_id, pid=msg.pid, lines=[note]))
            sub.send(msg)

    def _fence(self, reason: str) -> None:
        """The head declared this node dead: kill every worker now and stop (the daemon exits)."""
        if self.fenced.is_set():
            return
        log.error("node %s is fenced, stopping it and its workers: %s", _ids.short(self.node_id), reason)
        for proc in self._procs.values():
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        self.fenced.set()

    def _kill_worker(self, worker_id: bytes) -> None:
        proc = self._procs.get(worker_id)
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------ messages
    def _on_message(self, conn: Connection, msg: m.Message) -> None:
        now = time.monotonic()
        if isinstance(msg, m.RequestLease):
            self._clients.add(conn)
            target = placement.spill_target(
                msg.resources, self.scheduler.total, self.scheduler.available, self.view, self.node_id, msg.label
            )
            if target is not None:
                conn.reply(msg.rid, m.LeaseRedirect(redirect=target.address))
                return
            self._apply(self.scheduler.request(sch.LeaseRequest(conn, msg.rid, msg.resources, msg.dedicated, msg.label)))
        elif isinstance(msg, m.ReserveSpace):
            self.spawn(self._reserve(conn, msg), "reserve-space")
        elif isinstance(msg, m.FetchObject):
            self.spawn(self._fetch(conn, msg), "fetch-object")
        elif isinstance(msg, m.ObjectLocation):
            if self._head is not None and self._head.is_open:
                msg.node_id = self.node_id
                self._head.send(msg)
        elif isinstance(msg, m.WorkerOwns):
            rec = self.scheduler.workers.get(conn.state.get("worker_id", b""))
            if rec is not None:
                rec.owns_objects = msg.owns
        elif isinstance(msg, m.ReturnLease):
            self._apply(self.scheduler.lease_returned(msg.lease_id, now, msg.kill))
        elif isinstance(msg, m.LogLines):
            self._forward_logs(msg)
        elif isinstance(msg, m.WorkerBlocked):
            self._apply(self.scheduler.blocked(msg.worker_id))
        elif isinstance(msg, m.WorkerUnblocked):
            self._apply(self.scheduler.unblocked(msg.worker_id))
        elif isinstance(msg, m.CancelLeaseRequest):
            self._apply(self.scheduler.cancel(conn, msg.rid))
        elif isinstance(msg, m.RegisterWorker):
            conn.state["worker_id"] = msg.worker_id
            self._worker_conns[msg.worker_id] = conn
            self._apply(self.scheduler.worker_registered(msg.worker_id, msg.pid, msg.address, now))
        elif isinstance(msg, m.KillWorker):
            self._kill_worker(msg.worker_id)
        elif isinstance(msg, m.SubscribeLogs):
            self._log_subscribers.add(conn)
        elif isinstance(msg, m.GetNodeInfo):
            if msg.lease_after >= 0:
                self._watch_lease(conn, msg)
            else:
                conn.reply(msg.rid, self.info())
        elif isinstance(msg, m.GetLogs):
            self.spawn(self._answer_logs(conn, msg), "answer-logs")
        else:
            log.warning("node: unexpected %s", type(msg).__name__)

    def _on_head_message(self, conn: Connection, msg: m.Message) -> None:
        if isinstance(msg, m.Fenced):
            self._fence(msg.reason)
        elif isinstance(msg, m.ClusterView):
            self.view = msg.nodes
            if self._pull_sources:
                self._abandon_pulls_from_dead_nodes()
        elif isinstance(msg, m.DeleteObjects):  # freed by their owners: our copies go too
            self._delete_copies(msg.object_ids)
        elif isinstance(msg, m.OwnerGone):
            self._delete_copies(self.store.ids_with_prefix(msg.prefix))
        elif isinstance(msg, m.ReturnLease):  # an actor lease kept across a head restart, unknown to the new head
            self._apply(self.scheduler.lease_returned(msg.lease_id, time.monotonic(), msg.kill))
        else:
            log.debug("node: head sent %s", type(msg).__name__)

    # ------------------------------------------------------------ moving objects between nodes
    async def _fetch(self, conn: Connection, msg: m.FetchObject) -> None:
        """Make a remote object local (once, however many ask), then answer the asker."""
        oid = msg.object_id
        if self.store.contains(oid):
            conn.reply(msg.rid, True)
            return
        pull = self._pulls.get(oid)
        if pull is None:
            pull = self._pulls[oid] = asyncio.get_running_loop().create_future()
            self._pull_sources[oid] = msg.node_id
            self.spawn(self._pull_into(pull, oid, msg.node_id, msg.size), "pull-object")
        try:
            await asyncio.shield(pull)
        except Exception as exc:
            conn.reply(msg.rid, error=f"object {oid.hex()} could not be fetched from node {msg.node_id.hex()[:8]}: {exc}")
            return
        conn.reply(msg.rid, True)

    async def _pull_into(self, done: asyncio.Future[None], oid: bytes, node_id: bytes, size_hint: int) -> None:
        """One pull of an object, whatever number of askers wait on ``done``."""
        try:
            await self._pull(oid, node_id, size_hint)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
                done.exception()  # seen: the askers report it
        else:
            if not done.done():
                done.set_result(None)
        finally:
            if self._pulls.get(oid) is done:
                del self._pulls[oid]
                self._pull_sources.pop(oid, None)

    def _abandon_pulls_from_dead_nodes(self) -> None:
        """A node died while we copied from it: the askers hear so now, not when the socket
        times out (a frozen node keeps it open); the copy thread ends on its own deadline."""
        dead = {n.node_id for n in self.view if not n.alive}
        for oid, source in list(self._pull_sources.items()):
            if source in dead:
                done = self._pulls.pop(oid, None)
                del self._pull_sources[oid]
                if done is not None and not done.done():
                    done.set_exception(ConnectionError(f"node {source.hex()[:8]} died during the transfer"))
                    done.exception()

    async def _pull(self, oid: bytes, node_id: bytes, size_hint: int = 0) -> None:
        node = next((n for n in self.view if n.node_id == node_id), None)
        if node is None or not node.alive:
            raise ConnectionError("that node is dead or unknown")
        if not node.info.get("transfer"):
            raise ConnectionError("that node serves no object transfers")
        where = await self._make_room(size_hint) if size_hint else {}
        final = self.store.spill_path(oid) if where.get("disk") else self.store.path(oid)
        tmp = f"{final}-{next(self._pull_ids)}.{os.getpid()}.tmp"  # an abandoned pull may still write its own
        if where.get("segment"):
            os.rename(where["segment"], tmp)  # receive into warm memory
        loop = asyncio.get_running_loop()
        try:
            size = await loop.run_in_executor(None, transfer.fetch, node.info.get("transfer", ""), self.config.token, oid, tmp)
            os.rename(tmp, final)
            if size_hint:
                self._refill_segments()
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if self._head is not None and self._head.is_open:
            self._head.send(m.ObjectLocation(object_id=oid, node_id=self.node_id, size=int(size)))

    def _locate(self, object_id: bytes) -> str | None:
        """Where an object of this store is now: in memory, on disk, or (moving) in memory again."""
        for path in (self.store.path(object_id), self.store.spill_path(object_id), self.store.path(object_id)):
            if os.path.exists(path):
                return path
        return None

    def _on_close(self, conn: Connection) -> None:
        self._log_subscribers.discard(conn)
        worker_id = conn.state.get("worker_id")
        if worker_id is not None:
            self._worker_conns.pop(worker_id, None)
            self._lease_watches.pop(worker_id, None)
            self._watchers.discard(worker_id)
            self._release_grant(worker_id)  # its holder finds the worker gone, as with any grant of a dying worker
            self._kill_worker(worker_id)  # a worker that hung up is no use; its watcher cleans up
        if conn in self._clients:
            self._clients.discard(conn)
            if not self._stopped:
                head = conn.peer is not None and conn.peer.role == "head"  # its actors outlive it
                self._apply(self.scheduler.orphan(conn) if head else self.scheduler.client_gone(conn))

    def info(self) -> dict[str, Any]:
        """The node's state, for ``nodes()``, the CLI and the dashboard (with host and per-worker usage)."""
        from asyncray._node import usage

        leases = self.scheduler.leases
        workers = [
            {"worker_id": w.worker_id, "pid": w.pid, "state": w.state.value, "lease_id": w.lease_id,
             "gpu_ids": leases[w.lease_id].gpu_ids if w.lease_id in leases else [], **usage.process_usage(w.pid)}
            for w in self.scheduler.workers.values()
        ]
        return {
            "node_id": self.node_id,
            "address": self.address,
            "resources": self.scheduler.total,
            "available": self.scheduler.available,
            "workers": workers,
            "host": usage.host_usage(),
            "pid": os.getpid(),
            "store": self.store_usage.as_dict(),
        }

    async def _answer_logs(self, conn: Connection, msg: m.GetLogs) -> None:
        from asyncray._node import usage

        pids = {_ids.short(w.worker_id): w.pid for w in self.scheduler.workers.values()}
        try:
            value = await asyncio.to_thread(usage.read_logs, self.log_dir, pids, msg.worker, msg.q, msg.limit)
        except Exception as exc:
            conn.reply(msg.rid, error=f"{type(exc).__name__}: {exc}")
            return
        conn.reply(msg.rid, value)
