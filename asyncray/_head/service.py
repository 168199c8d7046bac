"""The head service: nodes register here, report free resources, and actors get names."""

from __future__ import annotations

import logging
import time
from typing import Any

from asyncray._service import Service
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, serve

log = logging.getLogger(__name__)


class HeadService(Service):
    """Cluster membership, resource view and the actor/name directory."""

    name = "head"

    def __init__(self, address: str, *, token: str = "") -> None:
        super().__init__()
        self.address = address
        self.token = token
        self.nodes: dict[bytes, dict[str, Any]] = {}
        self.actors: dict[bytes, dict[str, Any]] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self._node_conns: dict[bytes, Connection] = {}

    async def _start(self) -> None:
        server, self.address = await serve(
            self.address, self._on_message, token=self.token, name="head", on_close=self._on_close
        )
        self._servers.append(server)

    async def _stop(self) -> None:
        for conn in list(self._node_conns.values()):
            conn.close()

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
            self._node_conns[msg.node_id] = conn
            conn.state["node_id"] = msg.node_id
            conn.reply(msg.rid, {"ok": True})
        elif isinstance(msg, m.GetClusterState):
            conn.reply(msg.rid, {"nodes": list(self.nodes.values())})
        elif isinstance(msg, m.RegisterActor):
            self._register_actor(conn, msg)
        elif isinstance(msg, m.UpdateActor):
            entry = self.actors.get(msg.actor_id)
            if entry is not None:
                entry.update(msg.info)
                if entry.get("state") == "DEAD" and entry.get("name"):
                    self.names.pop((entry["namespace"], entry["name"]), None)
        elif isinstance(msg, m.LookupActor):
            aid = self.names.get((msg.namespace, msg.name))
            conn.reply(msg.rid, self.actors.get(aid) if aid else None)
        else:
            log.warning("head: unexpected %s", type(msg).__name__)

    def _register_actor(self, conn: Connection, msg: m.RegisterActor) -> None:
        if msg.name:
            key = (msg.namespace, msg.name)
            existing = self.names.get(key)
            if existing is not None and self.actors.get(existing, {}).get("state") != "DEAD":
                if msg.get_if_exists:
                    conn.reply(msg.rid, {"existing": self.actors[existing]})
                else:
                    conn.reply(
                        msg.rid,
                        error=f"an actor named {msg.name!r} already exists in namespace {msg.namespace!r}",
                    )
                return
            self.names[key] = msg.actor_id
        entry = dict(msg.info)
        entry.update(actor_id=msg.actor_id, name=msg.name, namespace=msg.namespace)
        self.actors[msg.actor_id] = entry
        conn.reply(msg.rid, {"existing": None})

    def _on_close(self, conn: Connection) -> None:
        node_id = conn.state.get("node_id")
        if node_id is not None and node_id in self.nodes:
            self.nodes[node_id]["alive"] = False
            self._node_conns.pop(node_id, None)
