"""The head service: nodes register and report free resources; actors are placed and named."""

from __future__ import annotations

import logging
import time
from typing import Any

from asyncray._head.actors import ActorManager
from asyncray._node.scheduler import EPS
from asyncray._service import Service
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, connect, serve

log = logging.getLogger(__name__)


class HeadService(Service):
    """Cluster membership, resource view and the actor/name directory."""

    name = "head"

    def __init__(self, address: str, *, token: str = "") -> None:
        super().__init__()
        self.address = address
        self.token = token
        self.nodes: dict[bytes, dict[str, Any]] = {}
        self.actors = ActorManager(self)
        self._node_clients: dict[bytes, Connection] = {}
        self._conns: set[Connection] = set()

    async def _start(self) -> None:
        server, self.address = await serve(
            self.address, self._on_message, token=self.token, name="head",
            on_open=self._conns.add, on_close=self._on_close,
        )
        self._servers.append(server)

    async def _stop(self) -> None:
        for conn in list(self._node_clients.values()) + list(self._conns):
            conn.close()

    # ------------------------------------------------------------ nodes
    def pick_node(self, resources: dict[str, float]) -> dict[str, Any] | None:
        """A live node whose totals fit the request, preferring the most free resources."""
        fits = [
            n for n in self.nodes.values()
            if n["alive"] and all(n["resources"].get(k, 0.0) + EPS >= v for k, v in resources.items() if v > 0)
        ]
        if not fits:
            return None
        return max(fits, key=lambda n: n["available"].get("CPU", 0.0))

    async def node_client(self, node_id: bytes) -> Connection:
        """The head's own client connection to a node (for leases it holds, e.g. actors)."""
        conn = self._node_clients.get(node_id)
        if conn is None or not conn.is_open:
            conn = await connect(
                self.nodes[node_id]["address"], None, role="head", token=self.token, name="head->node"
            )
            self._node_clients[node_id] = conn
        return conn

    # ------------------------------------------------------------ messages
    def _on_message(self, conn: Connection, msg: m.Message) -> None:
        if isinstance(msg, m.NodeResources):
            node = self.nodes.get(msg.node_id)
            if node is not None:
                node["available"] = msg.available
                node["last_seen"] = time.time()
        elif isinstance(msg, m.RegisterNode):
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
            conn.reply(msg.rid, {"ok": True})
        elif isinstance(msg, m.GetClusterState):
            conn.reply(msg.rid, {"nodes": list(self.nodes.values())})
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
        elif isinstance(msg, m.WorkerExited):
            self.actors.worker_exited(msg.worker_id, msg.exit_code)
        else:
            log.warning("head: unexpected %s", type(msg).__name__)

    def _on_close(self, conn: Connection) -> None:
        self._conns.discard(conn)
        if self._stopped:
            return
        node_id = conn.state.get("node_id")
        if node_id is not None and node_id in self.nodes:
            self.nodes[node_id]["alive"] = False
        self.actors.owner_gone(conn)

