"""The head's actor manager: places actors on nodes, restarts them, records why they died.

Actors are placed by the head (not by their creator) so that detached actors outlive the
driver that made them and named actors can be found by anyone (SPEC 2, issue "Actors").
Callers learn an actor's address with WaitActor and then talk to its worker directly.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncray import _ids
from asyncray import _placement as placement
from asyncray._leasing import request_lease
from asyncray._wire import messages as m
from asyncray._wire.connection import (
    PEER_KEEPALIVE_S,
    Connection,
    ConnectionLost,
    RemoteCallError,
    connect,
    peer_timeout_s,
)
from asyncray._wire.messages import ProtocolError

if TYPE_CHECKING:
    from asyncray._head.service import HeadService

log = logging.getLogger(__name__)

# How long to wait, after an actor's connection drops, for its node to report the exit code.
EXIT_CODE_GRACE_S = 0.3
# After a head restart, how long the creator of a non-detached actor has to reconnect before
# the actor is taken for orphaned and ended (drivers retry every second at most).
DEFAULT_OWNER_RETURN_S = 20.0


def owner_return_s() -> float:
    """The owners' window to come back after a head restart (``ASYNCRAY_OWNER_RETURN_S``)."""
    return float(os.environ.get("ASYNCRAY_OWNER_RETURN_S", DEFAULT_OWNER_RETURN_S))
# How often placement looks again while restored nodes are still rejoining.
REJOIN_POLL_S = 0.2
# Reattaching to a live actor's worker after a head restart: one connection attempt's deadline.
REATTACH_TIMEOUT_S = 5.0
# The fields of a record that are written to storage (the rest is live connections).
STORED_FIELDS = (
    "actor_id", "name", "namespace", "meta", "spec", "owner_id", "incarnation", "num_restarts", "address",
    "pid", "node_id", "worker_id", "lease_id", "death_cause", "death_error", "exit_code",
)


class ActorState(enum.Enum):
    """Life of an actor as the head sees it."""

    PENDING = "PENDING_CREATION"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


@dataclass
class ActorRecord:
    """Everything the head knows about one actor."""

    actor_id: bytes
    name: str
    namespace: str
    meta: dict[str, Any]
    spec: dict[str, Any]
    owner: Connection | None
    owner_id: bytes = b""  # the creator's process id, to know it again when it reconnects
    state: ActorState = ActorState.PENDING
    incarnation: int = -1
    num_restarts: int = 0
    address: str = ""
    pid: int = 0
    node_id: bytes = b""
    worker_id: bytes = b""
    lease_id: int = 0
    node_conn: Connection | None = None
    conn: Connection | None = None
    death_cause: str = ""
    death_error: bytes | None = None  # pickled exception for a constructor failure
    exit_code: int | None = None
    waiters: list[tuple[Connection, int, int]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What storage keeps of the actor."""
        return {**{k: getattr(self, k) for k in STORED_FIELDS}, "state": self.state.value}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ActorRecord:
        """An actor as a previous head stored it (no live connections)."""
        fields = {k: rec[k] for k in STORED_FIELDS if k in rec}
        return cls(**fields, owner=None, state=ActorState(rec["state"]))

    def entry(self) -> dict[str, Any]:
        """The msgpack-able view callers get."""
        return {
            "actor_id": self.actor_id, "name": self.name, "namespace": self.namespace,
            "meta": self.meta, "state": self.state.value, "incarnation": self.incarnation,
            "address": self.address, "pid": self.pid, "node_id": self.node_id,
            "num_restarts": self.num_restarts, "death_cause": self.death_cause,
            "death_error": self.death_error, "detached": bool(self.spec.get("detached")),
            "job_id": self.spec.get("job_id", b""),
        }


def describe_exit(code: int | None) -> str:
    """Words for a process exit status."""
    if code is None:
        return "its process died"
    if code < 0:
        try:
            return f"its process was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"its process was killed by signal {-code}"
    return f"its process exited with code {code}"


class ActorManager:
    """Actor directory and lifecycle, driven by the head service."""

    def __init__(self, head: HeadService) -> None:
        self.head = head
        self.actors: dict[bytes, ActorRecord] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self._by_worker: dict[bytes, bytes] = {}

    # ------------------------------------------------------------ requests
    def create(self, conn: Connection, msg: m.CreateActorRequest) -> None:
        """Register the actor (checking its name), record it, then start placing it."""
        if msg.actor_id in self.actors:  # a creator that asks again after a head restart
            conn.reply(msg.rid, m.ActorRegistered())
            return
        if msg.name:
            key = (msg.namespace, msg.name)
            existing = self.names.get(key)
            if existing is not None and self.actors[existing].state is not ActorState.DEAD:
                if msg.get_if_exists:
                    conn.reply(msg.rid, m.ActorRegistered(existing=m.ActorEntry(**self.actors[existing].entry())))
                else:
                    conn.reply(
                        msg.rid,
                        error=f"an actor named {msg.name!r} already exists in namespace {msg.namespace!r}; "
                        "use get_actor() to reach it, or options(get_if_exists=True)",
                    )
                return
            self.names[key] = msg.actor_id
        owner_id = conn.peer.peer_id if conn.peer is not None else b""
        rec = ActorRecord(msg.actor_id, msg.name, msg.namespace, msg.meta, msg.spec, owner=conn, owner_id=owner_id)
        self.actors[msg.actor_id] = rec
        self.head.spawn(self._create(conn, msg.rid, rec), f"create-actor-{_ids.short(rec.actor_id)}")

    async def _create(self, conn: Connection, rid: int, rec: ActorRecord) -> None:
        try:
            await self._save(rec)
        except Exception as exc:
            self.actors.pop(rec.actor_id, None)
            self.names.pop((rec.namespace, rec.name), None)
            conn.reply(rid, error=f"the head could not record the actor in {self.head.storage_url}: {exc}")
            return
        conn.reply(rid, m.ActorRegistered())
        await self._place(rec)

    def wait(self, conn: Connection, msg: m.WaitActor) -> None:
        """Reply when the actor is alive in a newer incarnation than the caller knows, or dead."""
        rec = self.actors.get(msg.actor_id)
        if rec is None:
            conn.reply(msg.rid, error=f"no actor with id {msg.actor_id.hex()}")
            return
        if rec.state is ActorState.DEAD or (rec.state is ActorState.ALIVE and rec.incarnation > msg.after):
            conn.reply(msg.rid, rec.entry())
        else:
            rec.waiters.append((conn, msg.rid, msg.after))

    def lookup(self, conn: Connection, msg: m.LookupActor) -> None:
        """A named actor's entry, or None."""
        aid = self.names.get((msg.namespace, msg.name))
        rec = self.actors.get(aid) if aid else None
        conn.reply(msg.rid, rec.entry() if rec is not None and rec.state is not ActorState.DEAD else None)

    def kill(self, conn: Connection, msg: m.KillActor) -> None:
        """End the actor's process; with no_restart it stays dead (recorded before the reply)."""
        rec = self.actors.get(msg.actor_id)
        if rec is None:
            conn.reply(msg.rid, error=f"no actor with id {msg.actor_id.hex()}")
            return
        if msg.no_restart:
            self._mark_dead(rec, msg.reason)
        else:
            self._end_process(rec)  # the loss handler restarts it

        async def answer() -> None:
            try:
                await self._save(rec)
            except Exception as exc:
                conn.reply(msg.rid, error=f"the head could not record the kill in {self.head.storage_url}: {exc}")
                return
            conn.reply(msg.rid, None)

        self.head.spawn(answer(), "kill-actor")

    def list(self) -> list[dict[str, Any]]:
        """Every actor's entry."""
        return [rec.entry() for rec in self.actors.values()]

    # ------------------------------------------------------------ storage and restarts
    def _save(self, rec: ActorRecord) -> asyncio.Future[None]:
        """Write the actor's record (durable when the future is done)."""
        from asyncray._head.service import pack

        assert self.head.storage is not None
        return asyncio.ensure_future(self.head.storage.put("actors", rec.actor_id.hex(), pack(rec.record())))

    def _save_later(self, rec: ActorRecord, what: str) -> None:
        self.head.persist(self._save(rec), f"actor {_ids.short(rec.actor_id)} {what}")

    def restore(self, stored: dict[str, Any]) -> None:
        """Take one actor from the storage a previous head left (before serving)."""
        rec = ActorRecord.from_record(stored)
        self.actors[rec.actor_id] = rec
        if rec.worker_id:
            self._by_worker[rec.worker_id] = rec.actor_id
        if rec.name and rec.state is not ActorState.DEAD:
            self.names[(rec.namespace, rec.name)] = rec.actor_id

    def resume(self) -> None:
        """(Serving now.) Reattach to restored live actors, place the ones that were pending,
        and give the owners of non-detached ones time to come back."""
        restored = [rec for rec in self.actors.values() if rec.owner is None and rec.state is not ActorState.DEAD]
        for rec in restored:
            if rec.state is ActorState.ALIVE:
                self.head.spawn(self._reattach(rec), f"reattach-actor-{_ids.short(rec.actor_id)}")
            else:
                self.head.spawn(self._place(rec), f"place-actor-{_ids.short(rec.actor_id)}")
        if any(not rec.spec.get("detached") for rec in restored):
            self.head.spawn(self._end_orphans(), "end-orphaned-actors")

    async def _reattach(self, rec: ActorRecord) -> None:
        """Watch a live actor again (a restarted head): a worker that is gone is a lost actor."""
        try:
            conn = await asyncio.wait_for(connect(
                rec.address, None, role="head", token=self.head.token,
                name=f"head->actor-{_ids.short(rec.actor_id)}", on_close=lambda c: self._lost(rec, c),
            ), REATTACH_TIMEOUT_S)
        except (OSError, TimeoutError, ConnectionLost) as exc:
            log.info("actor %s did not survive the head's restart (%s)", _ids.short(rec.actor_id), exc)
            self.head.spawn(self._after_loss(rec), "actor-lost")
            return
        conn.keep_alive(PEER_KEEPALIVE_S, peer_timeout_s())
        rec.conn = conn
        log.info("actor %s reattached at %s", _ids.short(rec.actor_id), rec.address)

    async def _end_orphans(self) -> None:
        await asyncio.sleep(owner_return_s())
        for rec in list(self.actors.values()):
            if rec.owner is None and rec.owner_id and not rec.spec.get("detached") and rec.state is not ActorState.DEAD:
                self._mark_dead(rec, "its owner did not reconnect after the head restarted")

    def owner_back(self, conn: Connection) -> None:
        """A driver or worker (re)connected: it owns again the actors it created before a restart."""
        peer_id = conn.peer.peer_id if conn.peer is not None else b""
        if not peer_id:
            return
        for rec in self.actors.values():
            if rec.owner is None and rec.owner_id == peer_id:
                rec.owner = conn

    def owner_moved(self, old: Connection, new: Connection) -> None:
        """The owner reconnected (a new connection from the same process): its actors follow."""
        for rec in self.actors.values():
            if rec.owner is old:
                rec.owner = new

    def unknown_leases(self, node_id: bytes, held: builtins.list[int]) -> builtins.list[int]:
        """Of the leases a rejoining node kept for the head, those no live actor record holds."""
        known = {rec.lease_id for rec in self.actors.values() if rec.node_id == node_id and rec.state is not ActorState.DEAD}
        return [lease for lease in held if lease not in known]

    # ------------------------------------------------------------ events
    def worker_exited(self, worker_id: bytes, exit_code: int) -> None:
        """A node reported how a worker ended; remember it for the death cause."""
        aid = self._by_worker.get(worker_id)
        rec = self.actors.get(aid) if aid else None
        if rec is not None and rec.worker_id == worker_id:
            rec.exit_code = exit_code

    def node_died(self, node_id: bytes) -> None:
        """Actors on a dead node are lost: restart them elsewhere or mark them dead."""
        for rec in list(self.actors.values()):
            if rec.node_id == node_id and rec.state is ActorState.ALIVE and rec.conn is not None:
                conn, rec.conn = rec.conn, None
                conn.abort()
                rec.exit_code = None
                self.head.spawn(self._after_loss(rec), "actor-node-lost")

    def owner_gone(self, conn: Connection) -> None:
        """The creator disconnected: its non-detached actors die with it (SPEC 2)."""
        for rec in list(self.actors.values()):
            if rec.owner is conn and not rec.spec.get("detached") and rec.state is not ActorState.DEAD:
                self._mark_dead(rec, "its owner (the process that created it) exited")

    # ------------------------------------------------------------ placing and losing
    async def _node_at(self, address: str) -> Connection:
        """The head's client connection to the node listening at ``address`` (a redirect's target)."""
        node_id = next((nid for nid, n in self.head.nodes.items() if n["address"] == address), None)
        if node_id is None:
            raise ConnectionLost(f"no node listens at {address}")
        return await self.head.node_client(node_id)

    async def _place(self, rec: ActorRecord) -> None:
        try:
            await self._place_once(rec)
        except Exception as exc:  # never leave an actor pending forever
            log.exception("placing actor %s failed", _ids.short(rec.actor_id))
            self._mark_dead(rec, f"it could not be placed: {exc}")

    async def _place_once(self, rec: ActorRecord) -> None:
        spec = rec.spec
        resources: dict[str, float] = spec["resources"]
        affinity = placement.Affinity.of(spec.get("affinity"))
        while True:
            try:
                node = placement.actor_node(self.head.view(), resources, affinity)
                break
            except placement.Unplaceable as exc:
                # Right after a restart the nodes are still rejoining: wait for them (bounded
                # by their rejoin deadline, after which they are dead or back), then decide.
                if self.head.nodes_rejoining() and rec.state is not ActorState.DEAD:
                    await asyncio.sleep(REJOIN_POLL_S)
                    continue
                self._mark_dead(rec, str(exc))
                return
        # Count the placement at once: the node's next heartbeat corrects the view, and until
        # then the next actor does not pick the same "free" CPU.
        available = self.head.nodes[node.node_id]["available"]
        for k, v in resources.items():
            available[k] = available.get(k, 0.0) - v
        pinned = affinity is not None and not affinity.soft
        try:
            node_conn, grant = await request_lease(
                await self.head.node_client(node.node_id), resources,
                placement.LABEL_PINNED_ACTOR if pinned else placement.LABEL_ACTOR,
                connect_to=self._node_at, redirected_label=placement.LABEL_PINNED_ACTOR, dedicated=True,
            )
        except (RemoteCallError, ConnectionLost, ProtocolError) as exc:
            self._mark_dead(rec, f"it could not be placed: {exc}")
            return
        if not isinstance(grant, m.LeaseGrant):
            self._mark_dead(rec, f"it could not be placed: no node took it (last sent to {grant.redirect})")
            return
        if rec.state is ActorState.DEAD:  # killed while waiting for a worker
            node_conn.send(m.ReturnLease(lease_id=grant.lease_id, kill=True))
            return
        rec.node_conn, rec.lease_id = node_conn, grant.lease_id
        rec.worker_id, rec.pid, rec.node_id = grant.worker_id, grant.pid, grant.node_id
        rec.exit_code = None
        self._by_worker[rec.worker_id] = rec.actor_id
        incarnation = rec.incarnation + 1
        try:
            conn = await connect(
                grant.address, None, role="head", token=self.head.token,
                name=f"head->actor-{_ids.short(rec.actor_id)}",
                on_close=lambda c: self._lost(rec, c), timeout=REATTACH_TIMEOUT_S,
            )
        except OSError as exc:  # the granted worker died before we reached it: a lost actor
            log.info("actor %s: its worker at %s cannot be reached (%s)", _ids.short(rec.actor_id), grant.address, exc)
            self.head.spawn(self._after_loss(rec), "actor-lost")
            return
        try:
            conn.keep_alive(PEER_KEEPALIVE_S, peer_timeout_s())  # a frozen actor worker is lost, not waited on
            rec.conn = conn
            result = await conn.request(
                m.CreateActor(
                    rid=0, actor_id=rec.actor_id, class_blob=spec["class_blob"], name=rec.meta["class_name"],
                    args=spec["args"], kwargs=spec["kwargs"], max_concurrency=spec["max_concurrency"],
                    owner=spec.get("owner", ""), job_id=spec.get("job_id", b""),
                    concurrency_groups=dict(spec.get("concurrency_groups") or {}),
                    sync_methods_on_loop=bool(spec.get("sync_methods_on_loop")),
                )
            )
        except (OSError, ConnectionLost, RemoteCallError):
            return  # _lost() handles the dead worker
        if rec.state is ActorState.DEAD:  # type: ignore[comparison-overlap]  # it may have died while we awaited
            return
        if result.error is not None:
            rec.death_error = result.error
            self._mark_dead(rec, "its constructor raised an exception")
            return
        rec.state, rec.incarnation, rec.address = ActorState.ALIVE, incarnation, grant.address
        try:
            await self._save(rec)  # callers learn the address only once a restarted head would know it too
        except Exception:
            log.exception("recording actor %s as alive failed", _ids.short(rec.actor_id))
        self._notify(rec)

    def _lost(self, rec: ActorRecord, conn: Connection) -> None:
        if rec.conn is not conn or rec.state is ActorState.DEAD:
            return
        rec.conn = None
        self.head.spawn(self._after_loss(rec), "actor-lost")

    async def _after_loss(self, rec: ActorRecord) -> None:
        await asyncio.sleep(EXIT_CODE_GRACE_S)
        if rec.state is ActorState.DEAD:
            return
        how = describe_exit(rec.exit_code)
        limit = int(rec.spec.get("max_restarts", 0))
        if limit == -1 or rec.num_restarts < limit:
            rec.num_restarts += 1
            rec.state = ActorState.RESTARTING
            self._save_later(rec, "restarting")
            log.info("actor %s died (%s); restart %d", _ids.short(rec.actor_id), how, rec.num_restarts)
            self._end_process(rec)
            await self._place(rec)
            return
        cause = how if limit == 0 else f"{how}, and it is out of restarts (max_restarts={limit})"
        self._mark_dead(rec, cause)

    def _end_process(self, rec: ActorRecord) -> None:
        if not rec.lease_id:
            return
        if rec.node_conn is not None and rec.node_conn.is_open:
            rec.node_conn.send(m.ReturnLease(lease_id=rec.lease_id, kill=True))
            return
        # Placed by a head that died: the lease is the node's to end, through its own connection.
        node_conn = self.head.node_conns.get(rec.node_id)
        if node_conn is not None and node_conn.is_open:
            node_conn.send(m.ReturnLease(lease_id=rec.lease_id, kill=True))

    def _mark_dead(self, rec: ActorRecord, cause: str) -> None:
        if rec.state is ActorState.DEAD:
            return
        rec.state, rec.death_cause = ActorState.DEAD, cause
        if rec.name and self.names.get((rec.namespace, rec.name)) == rec.actor_id:
            self.names.pop((rec.namespace, rec.name), None)
        self._end_process(rec)
        rec.lease_id = 0
        self._save_later(rec, "death")
        if rec.conn is not None:
            rec.conn.close()
            rec.conn = None
        self._notify(rec)

    def _notify(self, rec: ActorRecord) -> None:
        keep = []
        for conn, rid, after in rec.waiters:
            if rec.state is ActorState.DEAD or rec.incarnation > after:
                conn.reply(rid, rec.entry())
            else:
                keep.append((conn, rid, after))
        rec.waiters = keep
