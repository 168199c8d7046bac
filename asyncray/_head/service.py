"""The head service: nodes register and report free resources; actors are placed and named."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from asyncray._head.actors import ActorManager
from asyncray._head.jobs import JobManager
from asyncray._head.state import TaskTable
from asyncray._service import Service
from asyncray._wire import messages as m
from asyncray._wire.connection import PEER_KEEPALIVE_S, Connection, connect, peer_timeout_s, serve

log = logging.getLogger(__name__)


# How often the head checks heartbeats and sends every node the cluster view.
VIEW_INTERVAL_S = 0.5
DEFAULT_NODE_TIMEOUT_S = 5.0
FREED_MEMORY = 10_000  # how many freed object ids the head remembers


class HeadService(Service):
    """Cluster membership, resource view and the actor/name directory."""

    name = "head"

    def __init__(self, address: str, *, token: str = "", node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S) -> None:
        super().__init__()
        self.address = address
        self.token = token
        self.node_timeout_s = node_timeout_s
        self.nodes: dict[bytes, dict[str, Any]] = {}
        self.objects: dict[bytes, dict[bytes, int]] = {}  # object id -> {node id: size}
        # Recently freed ids: a copy announced after its object was freed is deleted at once.
        self._freed: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.tasks = TaskTable()
        self._node_conns: dict[bytes, Connection] = {}
        self.actors = ActorManager(self)
        self.jobs = JobManager(self)
        self._node_clients: dict[bytes, Connection] = {}
        self._conns: set[Connection] = set()

    async def _start(self) -> None:
        server, self.address = await serve(
            self.address, self._on_message, token=self.token, name="head",
            on_open=self._conns.add, on_close=self._on_close,
        )
        self._servers.append(server)
        self.supervise(self._watch_nodes, "watch-nodes")

    async def _watch_nodes(self) -> None:
        """Declare silent nodes dead and keep every node's picture of the cluster fresh."""
        while True:
            await asyncio.sleep(VIEW_INTERVAL_S)
            now = time.time()
            for node in self.nodes.values():
                if node["alive"] and now - node["last_seen"] > self.node_timeout_s:
                    self._node_died(node["node_id"], f"no heartbeat for {self.node_timeout_s:g} s")
            self._send_view()

    def _send_view(self) -> None:
        view = m.ClusterView(nodes=self.view())
        for conn in self._node_conns.values():
            if conn.is_open:
                conn.send(view)

    def view(self) -> list[m.NodeView]:
        """Every node with its totals, free resources, liveness and facts (what placement reads)."""
        return [
            m.NodeView(
                node_id=n["node_id"], address=n["address"], resources=n["resources"], available=n["available"],
                alive=n["alive"], info=n["info"], last_seen=n["last_seen"], death_cause=n.get("death_cause", ""),
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
        client = self._node_clients.pop(node_id, None)
        if client is not None:
            client.abort()  # what waits on the dead node (an actor's lease) fails now, not never
        conn = self._node_conns.pop(node_id, None)
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
        for conn in self._node_conns.values():
            if conn.is_open:
                conn.send(m.OwnerGone(prefix=prefix))

    def _delete_copies(self, by_node: dict[bytes, list[bytes]]) -> None:
        for node_id, oids in by_node.items():
            conn = self._node_conns.get(node_id)
            if conn is not None and conn.is_open:
                conn.send(m.DeleteObjects(object_ids=oids))

    async def _stop(self) -> None:
        await self.jobs.stop()
        for conn in list(self._node_clients.values()) + list(self._conns):
            conn.close()


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
            known = self.nodes.get(msg.node_id)
            if known is not None and not known["alive"]:
                conn.reply(msg.rid, error=f"node {msg.node_id.hex()[:8]} was declared dead; start it again as a new node")
                conn.close()
                return
            self.nodes[msg.node_id] = {
                "node_id": msg.node_id,
                "address": msg.address,
                "resources": msg.resources,
                "available": dict(msg.resources),
                "alive": True,
                "info": msg.info,
                "last_seen": time.time(),
            }
            conn.state["node_id"] = msg.node_id
            self._node_conns[msg.node_id] = conn
            conn.reply(msg.rid, {"ok": True})
            self._send_view()
        elif isinstance(msg, m.ObjectLocation):
            if msg.added and msg.object_id in self._freed:  # a copy that landed after its object was freed
                self._delete_copies({msg.node_id: [msg.object_id]})
                return
            holders = self.objects.setdefault(msg.object_id, {})
            if msg.added:
                holders[msg.node_id] = msg.size
            else:
                holders.pop(msg.node_id, None)
        elif isinstance(msg, m.ObjectsFreed):
            self._objects_freed(msg.object_ids)
        elif isinstance(msg, m.OwnerPrefix):
            conn.state["id_prefix"] = msg.prefix
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
        prefix = conn.state.get("id_prefix")
        if prefix:  # its owner is gone: so are the objects it owned (Ray's ownership model)
            self._owner_gone(prefix)
        node_id = conn.state.get("node_id")
        if node_id is not None and self._node_conns.get(node_id) is conn:
            self._node_died(node_id, "its connection to the head closed")
        self.actors.owner_gone(conn)

