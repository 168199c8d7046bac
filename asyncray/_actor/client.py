"""The caller's side of actors: one ordered channel per actor, straight to its worker.

Calls from one process to one actor carry sequence numbers taken at ``.remote()`` time and
leave in that order, even when an earlier call still waits for its arguments, so a sync
actor runs them in submission order (SPEC 3).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any

from asyncray import _ids
from asyncray._client.ref import ObjectRef
from asyncray._client.task_spec import TaskSpec, TaskState
from asyncray._store import serialization as ser
from asyncray._threads import snapshot
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, ConnectionLost, RemoteCallError
from asyncray._wire.messages import ProtocolError
from asyncray.exceptions import ActorDiedError, TaskCancelledError

if TYPE_CHECKING:
    from asyncray._actor.handle import ActorHandle
    from asyncray._client.links import CoreLinks
    from asyncray._client.objects import ObjectTable
    from asyncray._client.submit import TaskSubmitter

log = logging.getLogger(__name__)


class _Channel:
    """This process's ordered pipe to one actor."""

    __slots__ = (
        "actor_id",
        "address",
        "class_name",
        "conn",
        "ctor_refs",
        "dead",
        "incarnation",
        "inflight",
        "next_seq",
        "node_id",
        "pid",
        "ready",
        "registered",
        "release_when_idle",
        "resolving",
        "send_seq",
    )

    def __init__(self, actor_id: bytes, class_name: str) -> None:
        self.actor_id = actor_id
        self.class_name = class_name
        self.next_seq = 0  # assigned in callers' threads, under the client's lock
        self.send_seq = 0
        self.ready: dict[int, TaskSpec] = {}
        self.inflight: dict[bytes, TaskSpec] = {}
        self.conn: Connection | None = None
        self.address = ""  # the actor's worker, for handing over refs inside results
        self.ctor_refs: list[ObjectRef[Any]] | None = None  # refs in the constructor's arguments: kept
        # alive while the actor may restart (it is built from them again), dropped once it is dead
        self.incarnation = -1
        self.dead: list[Any] | None = None  # error descriptor once the actor is gone for good
        self.resolving = False
        self.release_when_idle = False
        self.registered: asyncio.Future[Any] | None = None
        self.pid = 0  # the actor's process, for task lists and the timeline
        self.node_id = b""


class ActorClient:
    """Creates actors, routes calls, and turns actor deaths into ActorDiedError."""

    def __init__(self, links: CoreLinks, objects: ObjectTable, tasks: TaskSubmitter) -> None:
        self.links = links
        self.objects = objects
        self.tasks = tasks
        self._channels: dict[bytes, _Channel] = {}
        self._by_task: dict[bytes, _Channel] = {}
        self._lock = threading.Lock()

    def _channel(self, actor_id: bytes, class_name: str) -> _Channel:
        ch = self._channels.get(actor_id)
        if ch is None:
            with self._lock:
                ch = self._channels.get(actor_id)
                if ch is None:
                    ch = self._channels[actor_id] = _Channel(actor_id, class_name)
        return ch

    # ------------------------------------------------------------ creating (any thread)
    def create(
        self, actor_id: bytes, name: str, namespace: str, get_if_exists: bool,
        meta: dict[str, Any], spec: dict[str, Any], deps: list[ObjectRef[Any]], ctor_refs: list[ObjectRef[Any]],
    ) -> ActorHandle[Any]:
        """Ask the head to start an actor; named ones are checked before returning (off-loop)."""
        from asyncray._actor.handle import ActorHandle

        links = self.links
        ch = self._channel(actor_id, meta["class_name"])
        ch.ctor_refs = ctor_refs or None
        done: Any = None
        if name and not links.on_loop_thread():
            import concurrent.futures

            done = concurrent.futures.Future()
        links.call_soon(self._register, ch, name, namespace, get_if_exists, meta, spec, deps, done)
        if done is not None:
            result = done.result()
            if isinstance(result, BaseException):
                raise result
            existing: m.ActorEntry | None = result.existing
            if existing is not None:
                self._channels.pop(actor_id, None)
                return ActorHandle(existing.actor_id, existing.meta, self)
        if name or spec["detached"]:
            return ActorHandle(actor_id, meta, self)
        # The actor lives as long as its handles do, in this process and in any other they
        # were passed to: they all hold a ref to one small object we own, whose borrowers the
        # object table counts across processes; when it is freed, the actor ends.
        lifetime = self.objects.put(None)
        self.objects.on_freed(lifetime.id, lambda: self._handles_gone(ch))
        return ActorHandle(actor_id, meta, self, lifetime=lifetime)

    def _register(
        self, ch: _Channel, name: str, namespace: str, get_if_exists: bool,
        meta: dict[str, Any], spec: dict[str, Any], deps: list[ObjectRef[Any]], done: Any,
    ) -> None:
        def send() -> None:
            descs = {ref.id: self.objects.entry_for(ref).desc for ref in deps}
            for d in descs.values():
                if d is not None and d[0] == ser.ERROR:
                    self._die(ch, d)
                    if done is not None:
                        done.set_result(ValueError(f"an argument of {meta['class_name']}() failed upstream"))
                    return
            spec["args"] = [descs[a[1]] if a[0] == ser.REF else a for a in spec["args"]]
            spec["kwargs"] = {k: descs[a[1]] if a[0] == ser.REF else a for k, a in spec["kwargs"].items()}
            try:
                fut = self.links.request_head(m.CreateActorRequest(
                    rid=0, actor_id=ch.actor_id, name=name, namespace=namespace,
                    get_if_exists=get_if_exists, meta=meta, spec=spec,
                ))
            except ConnectionLost as exc:
                fut = self.links.loop.create_future()
                fut.set_exception(exc)
            fut.add_done_callback(lambda f: self._registered(ch, f, done))

        self.objects.watch(deps, len(deps), send)

    def _registered(self, ch: _Channel, fut: asyncio.Future[Any], done: Any) -> None:
        exc = fut.exception()
        if exc is not None:
            err = ValueError(str(exc)) if isinstance(exc, RemoteCallError) else exc
            self._die(ch, ser.error_descriptor(ActorDiedError(f"actor {ch.class_name} was not created: {err}")))
            if done is not None:
                done.set_result(err)
            return
        if done is not None:
            done.set_result(fut.result())

    # ------------------------------------------------------------ calls
    def submit(self, handle: ActorHandle[Any], spec: TaskSpec) -> list[ObjectRef[Any]]:
        """Number the call in submission order and hand it to the core (any thread)."""
        ch = self._channel(handle._actor_id, handle._meta["class_name"])
        spec.actor = ch
        with self._lock:
            spec.seq = ch.next_seq
            ch.next_seq += 1
        return self.tasks.submit(spec)

    def dispatch(self, spec: TaskSpec) -> None:
        """The call's arguments are ready (or it failed or was cancelled): send in order."""
        ch: _Channel = spec.actor
        ch.ready[spec.seq] = spec
        self._flush(ch)

    def _flush(self, ch: _Channel) -> None:
        if ch.dead is not None:
            while ch.send_seq in ch.ready:
                spec = ch.ready.pop(ch.send_seq)
                ch.send_seq += 1
                if spec.state is not TaskState.FINISHED:
                    self.tasks.finish(spec, [ch.dead] * len(spec.return_ids))
            return
        conn = ch.conn
        if conn is None or not conn.is_open:
            if ch.send_seq in ch.ready and not ch.resolving:
                ch.resolving = True
                self.links.spawn(self._resolve(ch), "resolve-actor")
            return
        while ch.send_seq in ch.ready:
            spec = ch.ready.pop(ch.send_seq)
            ch.send_seq += 1
            if spec.state is TaskState.FINISHED or spec.cancelled:
                continue
            spec.state = TaskState.RUNNING
            spec.started_at = time.time()
            spec.worker_pid, spec.node_id = ch.pid, ch.node_id
            ch.inflight[spec.task_id] = spec
            self._by_task[spec.task_id] = ch
            conn.send(self.tasks.push_message(conn, spec))

    async def _resolve(self, ch: _Channel) -> None:
        """Learn where the actor lives now (or that it is dead), then send what waits."""
        links = self.links
        try:
            entry = await links.request_head(m.WaitActor(rid=0, actor_id=ch.actor_id, after=ch.incarnation))
            if entry.state == "DEAD":
                self._die(ch, ser.error_descriptor(death_error(ch, entry.death_cause, entry.death_error)))
                return
            conn = await links.peer(entry.address)
        except (OSError, ConnectionLost, RemoteCallError, ProtocolError) as exc:
            self._die(ch, ser.error_descriptor(ActorDiedError(f"actor {ch.class_name} cannot be reached: {exc}")))
            return
        finally:
            ch.resolving = False
        ch.incarnation = entry.incarnation
        ch.pid, ch.node_id = entry.pid, entry.node_id
        ch.conn, ch.address = conn, entry.address
        self._flush(ch)

    def owns_task(self, task_id: bytes) -> bool:
        """True for actor calls this client sent."""
        return task_id in self._by_task

    def on_task_done(self, msg: m.TaskDone) -> None:
        """Route an actor call's result to its refs (or call again: ``retry_exceptions``)."""
        ch = self._by_task.pop(msg.task_id)
        spec = ch.inflight.pop(msg.task_id, None)
        if spec is not None:
            if (msg.failed and spec.retry_exceptions and spec.attempt < spec.max_retries and not spec.cancelled
                    and ch.dead is None and self.tasks.retryable(spec, msg.results[0])):
                spec.attempt += 1
                with self._lock:  # a new place in line: calls made since were sent already
                    spec.seq = ch.next_seq
                    ch.next_seq += 1
                self.dispatch(spec)
                return
            self.tasks.finish(spec, msg.results, msg.contained, ch.address)
        self._maybe_release(ch)

    def node_died(self, node_id: bytes) -> None:
        """Actors on a dead node: drop their connections (the head restarts them or marks them dead)."""
        for ch in snapshot(self._channels).values():
            if ch.node_id == node_id and ch.conn is not None:
                ch.conn.abort()  # connection_lost follows: calls retry on the next life, or fail

    def connection_lost(self, conn: Connection) -> None:
        """An actor's worker went away: retry in-flight calls on its next life, or fail them."""
        for ch in snapshot(self._channels).values():
            if ch.conn is not conn:
                continue
            ch.conn = None
            lost = sorted(ch.inflight.values(), key=lambda s: s.seq)
            ch.inflight.clear()
            for spec in lost:
                self._by_task.pop(spec.task_id, None)
            self.links.spawn(self._after_loss(ch, lost), "actor-lost")

    async def _after_loss(self, ch: _Channel, lost: list[TaskSpec]) -> None:
        links, tasks = self.links, self.tasks
        try:
            entry: m.ActorEntry = await links.request_head(
                m.WaitActor(rid=0, actor_id=ch.actor_id, after=ch.incarnation)
            )
            dead, cause, blob = entry.state == "DEAD", entry.death_cause, entry.death_error
        except (ConnectionLost, RemoteCallError, ProtocolError) as exc:
            dead, cause, blob = True, f"the head cannot be reached ({exc})", None
        if dead:
            err = ser.error_descriptor(death_error(ch, cause, blob))
            for spec in lost:
                tasks.finish(spec, [err] * len(spec.return_ids))
            self._die(ch, err)
            return
        for spec in lost:
            if spec.cancelled:
                tasks.finish(spec, [ser.error_descriptor(TaskCancelledError(f"{spec.fn.name} was cancelled"))] * len(spec.return_ids))
            elif spec.attempt < spec.max_retries:
                spec.attempt += 1
                ch.ready[spec.seq] = spec
                ch.send_seq = min(ch.send_seq, spec.seq)
            else:
                gone = ActorDiedError(
                    f"actor {ch.class_name}({_ids.short(ch.actor_id)}) died while running {spec.fn.name}"
                    f" and was restarted; the call is not retried (max_task_retries={spec.max_retries})"
                )
                tasks.finish(spec, [ser.error_descriptor(gone)] * len(spec.return_ids))
        ch.incarnation = entry.incarnation
        ch.pid, ch.node_id = entry.pid, entry.node_id
        try:
            ch.conn = await links.peer(entry.address)
        except (OSError, ConnectionLost) as exc:  # its new life is gone already: ask the head again
            log.info("actor %s: its new worker cannot be reached (%s)", ch.class_name, exc)
            ch.conn = None
        ch.address = entry.address
        self._flush(ch)

    def _die(self, ch: _Channel, desc: list[Any]) -> None:
        ch.dead = desc
        ch.ctor_refs = None
        for spec in list(ch.inflight.values()):
            self._by_task.pop(spec.task_id, None)
            self.tasks.finish(spec, [desc] * len(spec.return_ids))
        ch.inflight.clear()
        self._flush(ch)

    def cancel(self, spec: TaskSpec, force: bool) -> bool:
        """Cancel a running actor call; True when it was in flight."""
        ch: _Channel = spec.actor
        if spec.task_id in ch.inflight and ch.conn is not None:
            ch.conn.send(m.CancelTask(task_id=spec.task_id, force=force))
            return True
        return False

    # ------------------------------------------------------------ kill and handle lifetime
    async def kill(self, actor_id: bytes, no_restart: bool, reason: str = "it was killed by asyncray.kill()") -> None:
        """Kill through the head; with no_restart, this process's queued calls fail at once."""
        await self.links.request_head(m.KillActor(rid=0, actor_id=actor_id, no_restart=no_restart, reason=reason))
        ch = self._channels.get(actor_id)
        if ch is not None and no_restart:
            err = ActorDiedError(f"actor {ch.class_name}({_ids.short(actor_id)}) is dead: {reason}")
            self._die(ch, ser.error_descriptor(err))

    def _handles_gone(self, ch: _Channel) -> None:
        """No handle to an actor we own is left anywhere: after its pending calls, end it."""
        ch.release_when_idle = True
        self._maybe_release(ch)

    def _maybe_release(self, ch: _Channel) -> None:
        if not ch.release_when_idle or ch.inflight or ch.ready or ch.dead is not None:
            return
        if ch.next_seq != ch.send_seq or self.links.closed:
            return  # calls still being prepared
        ch.dead = ser.error_descriptor(ActorDiedError(f"actor {ch.class_name} went out of scope"))
        ch.ctor_refs = None
        self.links.spawn(self.kill(ch.actor_id, True, "all handles to it went out of scope"), "release-actor")


def death_error(ch: _Channel, cause: str, err_blob: bytes | None) -> ActorDiedError:
    """The ActorDiedError for a dead actor, carrying the constructor's error when it raised."""
    cause = cause or "it died"
    ctor_exc: BaseException | None = None
    if err_blob:
        try:
            ctor_exc = pickle.loads(err_blob)
        except Exception:
            ctor_exc = None
    msg = f"actor {ch.class_name}({_ids.short(ch.actor_id)}) is dead: {cause}"
    if ctor_exc is not None:
        msg += f":\n{ctor_exc}"
    err = ActorDiedError(msg)
    err.cause = ctor_exc  # type: ignore[attr-defined]
    err.__cause__ = ctor_exc
    return err
