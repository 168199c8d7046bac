"""The head service: nodes register and report free resources; actors are placed and named.

What others rely on (the node table, the actor directory, the cluster's token and address)
is written through ``storage`` before it is acknowledged, so a head started again on the same
storage picks up where the last one died: nodes and drivers reconnect, live actors are
reattached, actors that were being placed are placed again (``restore``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from typing import Any

import msgpack

from asyncray._head.actors import ActorManager
from asyncray._head.jobs import JobManager
from asyncray._head.state import TaskTable
from asyncray._head.storage import Storage, open_storage
from asyncray._service import Service
from asyncray._wire import messages as m
from asyncray._wire.connection import PEER_KEEPALIVE_S, Connection, connect, peer_timeout_s, serve

log = logging.getLogger(__name__)


# How often the head checks heartbeats and sends every node the cluster view.
VIEW_INTERVAL_S = 0.5
DEFAULT_NODE_TIMEOUT_S = 5.0
FREED_MEMORY = 10_000  # how many freed object ids the head remembers
# After a restart, nodes of the stored table get this long (beyond the node timeout) to rejoin.
REJOIN_GRACE_S = 10.0
NODE_FIELDS = ("node_id", "address", "resources", "info", "alive", "death_cause")
# A driver or worker whose connection closed is taken for gone (its objects freed, its actors
# ended) only if it has not reconnected by then: one that dropped a head it took for frozen
# is already back on a new connection.
OWNER_GONE_GRACE_S = 1.0
# The start of an error reply that means "not now": the asker should try again, not give up.
RETRY_LATER = "retry later:"
# A watch tick this late means the head itself was stalled (SIGSTOP, a paused VM): what it
# missed meanwhile (heartbeats, connections dropped by nodes that took it for gone) is not
# the nodes' fault.
STALL_S = 2.0


def pack(value: Any) -> bytes:
    """A stored record's bytes."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(raw: bytes) -> Any:
    """A stored record from its bytes."""
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class HeadService(Service):
    """Cluster membership, resource view and the actor/name directory."""

    name = "head"

    def __init__(
        self, address: str, *, token: str = "", node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S,
        storage: str = "memory://",
    ) -> None:
        super().__init__()
        self.address = address
        self.token = token
        self.node_timeout_s = node_timeout_s
        self.storage_url = storage
        self.storage: Storage | None = None
        self.restored = False  # True when this head took over the tables of one that died
        self.cluster_id = ""  # from storage, made at the cluster's first start
        self._last_tick = time.monotonic()  # the watch loop's last turn (to tell a stalled head)
        self._stalled_until = 0.0  # until then, nodes dropping us were reacting to our stall
        self.nodes: dict[bytes, dict[str, Any]] = {}
        self.objects: dict[bytes, dict[bytes, int]] = {}  # object id -> {node id: size}
        # Recently freed ids: a copy announced after its object was freed is deleted at once.
        self._freed: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.tasks = TaskTable()
        self.node_conns: dict[bytes, Connection] = {}
        self.actors = ActorManager(self)
        self.jobs = JobManager(self)
        self._node_clients: dict[bytes, Connection] = {}
        self._conns: set[Connection] = set()

    async def _start(self) -> None:
        self.storage = await open_storage(self.storage_url)
        await self._restore()
        server, self.address = await serve(
            self.address, self._on_message, token=self.token, name="head",
            on_open=self._conns.add, on_close=self._on_close,
            # Not on our side: dropping a driver that holds the GIL for a while would free its
            # objects and end its actors; a driver pings us, and nodes send heartbeats.
            ping_accepted=False,
        )
        self._servers.append(server)
        self.actors.resume()  # before any await: owners reconnecting now must find it done
        await self.storage.put("meta", "address", self.address.encode())
        self.supervise(self._watch_nodes, "watch-nodes")

    async def _restore(self) -> None:
        """Take over what a head that died on this storage left: token, nodes, actors."""
        assert self.storage is not None
        meta = await self.storage.load("meta")
        stored_token = meta.get("token", b"").decode()
        if stored_token and self.token and stored_token != self.token:
            raise ValueError(
                f"the storage at {self.storage_url} belongs to a cluster with another token; "
                "start the head with that cluster's token, or give it an empty storage"
            )
        self.token = self.token or stored_token
        if not stored_token:
            await self.storage.put("meta", "token", self.token.encode())
        self.cluster_id = meta.get("cluster_id", b"").decode()
        if not self.cluster_id:  # the cluster's name for good: the same across head restarts
            self.cluster_id = secrets.token_hex(8)
            await self.storage.put("meta", "cluster_id", self.cluster_id.encode())
        now = time.time()
        for raw in (await self.storage.load("nodes")).values():
            node = unpack(raw)
            # Counted as seen a little in the future: a node gets the timeout and a grace to rejoin.
            node.update(available=dict(node["resources"]), last_seen=now + REJOIN_GRACE_S, joined=False)
            self.nodes[node["node_id"]] = node
            self.restored = True
        for raw in (await self.storage.load("actors")).values():
            self.actors.restore(unpack(raw))
            self.restored = True
        if self.restored:
            log.warning("head of cluster %s restarted on %s: %d nodes and %d actors restored", self.cluster_id,
                        self.storage_url, len(self.nodes), len(self.actors.actors))

    def nodes_rejoining(self) -> bool:
        """True while some node restored from storage has neither rejoined nor been declared dead."""
        return any(n["alive"] and not n.get("joined", True) for n in self.nodes.values())

    def save_node(self, node: dict[str, Any]) -> asyncio.Future[None]:
        """Write a node's record (durable when the future is done)."""
        assert self.storage is not None
        record = {k: node.get(k, "") for k in NODE_FIELDS}
        return asyncio.ensure_future(self.storage.put("nodes", node["node_id"].hex(), pack(record)))

    async def _watch_nodes(self) -> None:
        """Declare silent nodes dead and keep every node's picture of the cluster fresh."""
        while True:
            await asyncio.sleep(VIEW_INTERVAL_S)
            late = time.monotonic() - self._last_tick - VIEW_INTERVAL_S
            self._last_tick = time.monotonic()
            now = time.time()
            if late > STALL_S:  # we were stalled, not the nodes: their silence is ours
                log.warning("the head was stalled for %.1f s; nodes get that time back", late)
                # Connections nodes dropped meanwhile may be read only after this turn.
                self._stalled_until = time.monotonic() + self.node_timeout_s
                for node in self.nodes.values():
                    node["last_seen"] = max(node["last_seen"], now)
            for node in self.nodes.values():
                if node["alive"] and now - node["last_seen"] > self.node_timeout_s:
                    self._node_died(node["node_id"], f"no heartbeat for {self.node_timeout_s:g} s")
            self._send_view()

    def _send_view(self) -> None:
        view = m.ClusterView(nodes=self.view())
        for conn in self.node_conns.values():
            if conn.is_open:
                conn.send(view)

    def view(self) -> list[m.NodeView]:
        """Every node with its totals, free resources, liveness and facts (what placement reads)."""
        return [
            m.NodeView(
                node_id=n["node_id"], address=n["address"], resources=n["resources"], available=n["available"],
                # A node restored from storage is not offered for placement until it rejoins.
                alive=n["alive"] and n.get("joined", True), info=n["info"], last_seen=n["last_seen"],
                death_cause=n.get("death_cause") or "",
            )
            for n in self.nodes.values()
        ]

    def _node_died(self, node_id: bytes, why: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node["alive"]:
            return
        # A node whose connection closed was usually stopped on purpose; a silent one was not.
        level = logging.INFO if "closed" in why else logging.WARNING
        log.log(level, "node %s is dead: %s", node_id.hex()[:8], why)
        node["alive"] = False
        node["death_cause"] = why
        self.persist(self.save_node(node), "node death")
        client = self._node_clients.pop(node_id, None)
        if client is not None:
            client.abort()  # what waits on the dead node (an actor's lease) fails now, not never
        conn = self.node_conns.pop(node_id, None)
        if conn is not None and conn.is_open:
            # Closed, not aborted: a frozen node reads this when it wakes, and stops.
            conn.send(m.Fenced(reason=f"the head declared this node dead: {why}"))
            conn.close()
        notice = m.NodeDead(node_id=node_id, cause=why)
        for other in list(self._conns):
            if other is not conn and other.is_open and other.peer is not None and other.peer.role in ("driver", "worker"):
                other.send(notice)
        for holders in self.objects.values():
            holders.pop(node_id, None)
        self.actors.node_died(node_id)
        self._send_view()

    def _objects_freed(self, object_ids: list[bytes]) -> None:
        """Forget freed objects and have every node that holds a copy delete it."""
        by_node: dict[bytes, list[bytes]] = {}
        for oid in object_ids:
            self._freed[oid] = None
            for node_id in self.objects.pop(oid, ()):
                by_node.setdefault(node_id, []).append(oid)
        while len(self._freed) > FREED_MEMORY:
            self._freed.popitem(last=False)
        self._delete_copies(by_node)

    def _owner_gone(self, prefix: bytes) -> None:
        """Every node deletes the objects of a process that is gone, announced or not (it may have
        died between writing an object and telling anyone)."""
        for oid in [oid for oid in self.objects if oid.startswith(prefix)]:
            del self.objects[oid]
            self._freed[oid] = None
        for conn in self.node_conns.values():
            if conn.is_open:
                conn.send(m.OwnerGone(prefix=prefix))

    def _delete_copies(self, by_node: dict[bytes, list[bytes]]) -> None:
        for node_id, oids in by_node.items():
            conn = self.node_conns.get(node_id)
            if conn is not None and conn.is_open:
                conn.send(m.DeleteObjects(object_ids=oids))

    def persist(self, write: asyncio.Future[None], what: str) -> None:
        """Log a background write that failed (the head goes on; the next write may succeed)."""

        def done(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                log.error("head storage %s: writing %s failed: %s", self.storage_url, what, fut.exception())

        write.add_done_callback(done)

    async def _stop(self) -> None:
        await self.jobs.stop()
        for conn in list(self._node_clients.values()) + list(self._conns):
            conn.close()
        if self.storage is not None:
            await self.storage.close()


    # ------------------------------------------------------------ nodes
    async def node_client(self, node_id: bytes) -> Connection:
        """The head's own client connection to a node (for leases it holds, e.g. actors)."""
        conn = self._node_clients.get(node_id)
        if conn is None or not conn.is_open:
            conn = await connect(
                self.nodes[node_id]["address"], None, role="head", token=self.token, name="head->node"
            )
            conn.keep_alive(PEER_KEEPALIVE_S, peer_timeout_s())
            self._node_clients[node_id] = conn
        return conn

    # ------------------------------------------------------------ messages
    def _on_message(self, conn: Connection, msg: m.Message) -> None:
        if isinstance(msg, m.NodeResources):
            node = self.nodes.get(msg.node_id)
            if node is not None and not node["alive"]:  # a fenced node that woke up: stop it again
                conn.send(m.Fenced(reason=f"the head declared this node dead: {node.get('death_cause', '')}"))
                conn.close()
            elif node is not None:
                node["available"] = msg.available
                node["last_seen"] = time.time()
        elif isinstance(msg, m.RegisterNode):
            self.spawn(self._register_node(conn, msg), "register-node")
        elif isinstance(msg, m.ObjectLocation):
            if msg.added and msg.object_id in self._freed:  # a copy that landed after its object was freed
                self._delete_copies({msg.node_id: [msg.object_id]})
                return
            holders = self.objects.setdefault(msg.object_id, {})
            if msg.added:
                holders[msg.node_id] = msg.size
            else:
                holders.pop(msg.node_id, None)
        elif isinstance(msg, m.LocateObjects):
            alive = {nid for nid, n in self.nodes.items() if n["alive"]}
            found = {oid: [nid for nid in self.objects.get(oid, {}) if nid in alive] for oid in msg.object_ids}
            conn.reply(msg.rid, {oid: nodes for oid, nodes in found.items() if nodes})
        elif isinstance(msg, m.ObjectsFreed):
            self._objects_freed(msg.object_ids)
        elif isinstance(msg, m.OwnerPrefix):  # the first thing a driver or worker says
            conn.state["id_prefix"] = msg.prefix
            self.actors.owner_back(conn)
        elif isinstance(msg, m.GetClusterState):
            conn.reply(msg.rid, m.ClusterState(nodes=self.view()))
        elif isinstance(msg, m.CreateActorRequest):
            self.actors.create(conn, msg)
        elif isinstance(msg, m.WaitActor):
            self.actors.wait(conn, msg)
        elif isinstance(msg, m.KillActor):
            self.actors.kill(conn, msg)
        elif isinstance(msg, m.LookupActor):
            self.actors.lookup(conn, msg)
        elif isinstance(msg, m.ListActors):
            conn.reply(msg.rid, self.actors.list())
        elif isinstance(msg, m.TaskEvents):
            conn.state["owner"] = msg.owner
            self.tasks.report(
                msg.owner, msg.pid, msg.role, msg.counts, msg.live, msg.finished, msg.objects,
                actor=msg.actor, stored=msg.stored,
            )
        elif isinstance(msg, m.WorkerExited):
            self.actors.worker_exited(msg.worker_id, msg.exit_code)
        elif isinstance(msg, m.GetState | m.SubmitJob | m.StopJob):
            self.spawn(self._answer_state(conn, msg), "answer-state")
        else:
            log.warning("head: unexpected %s", type(msg).__name__)

    async def _register_node(self, conn: Connection, msg: m.RegisterNode) -> None:
        """A node joins, or rejoins after a head restart: recorded durably, then acknowledged."""
        known = self.nodes.get(msg.node_id)
        if known is not None and not known["alive"]:
            conn.reply(msg.rid, error=f"node {msg.node_id.hex()[:8]} was declared dead; start it again as a new node")
            conn.close()
            return
        node = {
            "node_id": msg.node_id, "address": msg.address, "resources": msg.resources,
            "available": dict(msg.resources), "alive": True, "info": msg.info, "last_seen": time.time(),
        }
        try:
            await self.save_node(node)
        except Exception as exc:  # the node tries again (it is not dead: our storage is unwell)
            conn.reply(msg.rid, error=f"{RETRY_LATER} the head could not record the node in {self.storage_url}: {exc}")
            conn.close()
            return
        if not conn.is_open:
            return  # it gave up waiting; it will register again
        self.nodes[msg.node_id] = node
        conn.state["node_id"] = msg.node_id
        self.node_conns[msg.node_id] = conn
        conn.reply(msg.rid, {"ok": True})
        if known is not None or msg.held:
            log.info("node %s rejoined (%d leases held for actors)", msg.node_id.hex()[:8], len(msg.held))
            for lease_id in self.actors.unknown_leases(msg.node_id, msg.held):
                conn.send(m.ReturnLease(lease_id=lease_id, kill=True))  # an actor no record owns
        self._send_view()

    async def _answer_state(self, conn: Connection, msg: m.GetState | m.SubmitJob | m.StopJob) -> None:
        """State queries and job requests (dashboard, CLI, ``asyncray.util.state``)."""
        from asyncray._head.state_api import answer

        try:
            value = await answer(self, msg)
        except Exception as exc:
            conn.reply(msg.rid, error=f"{type(exc).__name__}: {exc}")
            return
        conn.reply(msg.rid, value)

    def _on_close(self, conn: Connection) -> None:
        self._conns.discard(conn)
        if self._stopped:
            return
        if "owner" in conn.state:
            self.tasks.forget(conn.state["owner"])
        node_id = conn.state.get("node_id")
        if node_id is not None and self.node_conns.get(node_id) is conn:
            mono = time.monotonic()
            if mono - self._last_tick > STALL_S + VIEW_INTERVAL_S or mono < self._stalled_until:
                # We were stalled and the node took us for gone: it rejoins, it is not dead.
                del self.node_conns[node_id]
                self.nodes[node_id]["last_seen"] = time.time()
                log.warning("node %s dropped the stalled head; waiting for it to rejoin", node_id.hex()[:8])
            else:
                self._node_died(node_id, "its connection to the head closed")
        if conn.peer is not None and conn.peer.role in ("driver", "worker"):
            asyncio.get_running_loop().call_later(OWNER_GONE_GRACE_S, self._owner_left, conn)

    def _owner_left(self, conn: Connection) -> None:
        """A driver or worker closed its connection a moment ago: unless it is back, what it owned goes."""
        if self._stopped:
            return
        assert conn.peer is not None
        back = next((c for c in self._conns if c.is_open and c.peer is not None and c.peer.peer_id == conn.peer.peer_id), None)
        if back is not None:
            self.actors.owner_moved(conn, back)
            return
        prefix = conn.state.get("id_prefix")
        if prefix:  # its owner is gone: so are the objects it owned (Ray's ownership model)
            self._owner_gone(prefix)
        self.actors.owner_gone(conn)

