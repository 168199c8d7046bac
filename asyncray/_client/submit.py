"""Submitting tasks: dependencies, leases on workers, pipelining, retries.

A submitter leases a worker from a node and pushes tasks to it directly, so a task costs
one round trip between two processes (as Ray's lease-based scheduling).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from asyncray import _ids
from asyncray import _placement as placement
from asyncray._client.context import current_job_id, current_task
from asyncray._client.links import CoreLinks
from asyncray._client.objects import ObjectTable
from asyncray._client.ref import ObjectRef
from asyncray._client.task_spec import FunctionDescriptor, TaskSpec, TaskState
from asyncray._leasing import request_lease
from asyncray._store import serialization as ser
from asyncray._threads import snapshot
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, ConnectionLost, RemoteCallError
from asyncray._wire.messages import ProtocolError
from asyncray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from asyncray._store.shm import ObjectStore

log = logging.getLogger(__name__)


# A lease nobody uses is given back after this long: long enough that a driver doing
# get(f.remote()) in a loop keeps its worker, short enough not to starve others.
IDLE_LEASE_S = 0.005
# After the node asks for idle leases back, leases that go idle are returned at once.
RECLAIM_WINDOW_S = 1.0
# At most this many lease requests in flight per resource shape.
MAX_LEASE_REQUESTS = 16
# How long cancel() of a ref owned elsewhere tries to reach that owner.
CANCEL_FORWARD_TIMEOUT_S = 10.0
# Finished tasks kept for the next report to the head, at most.
MAX_EVENTS_PER_REPORT = 20_000
# Tasks no node can run are retried this often, and fail after the timeout (env var overrides).
UNSCHEDULABLE_RETRY_S = 0.5
DEFAULT_UNSCHEDULABLE_TIMEOUT_S = 5.0
# Lease requests that cannot reach a node are retried this often, and fail after the timeout.
UNREACHABLE_RETRY_S = 0.2
DEFAULT_UNREACHABLE_TIMEOUT_S = 30.0
# Asking the head for other copies of lost objects: past this, they are rebuilt instead.
LOCATE_TIMEOUT_S = 10.0
# Tasks of a function known to run shorter than this are pipelined: up to PIPELINE_DEPTH sit
# on one leased worker, so it never idles for a round trip. Unknown or longer functions get
# one at a time, so a long task never holds up another behind it.
SHORT_TASK_S = 0.002
PIPELINE_DEPTH = 4
ASYNC_TASKS_PER_WORKER = 100
MIN_SAMPLES_TO_PIPELINE = 5


class _Lease:
    __slots__ = (
        "address", "conn", "idle_since", "inflight", "lease_id", "node_conn", "node_id", "pid", "queue", "retire",
        "worker_id",
    )

    def __init__(self, grant: m.LeaseGrant, conn: Connection, queue: _SchedQueue, node_conn: Connection) -> None:
        self.node_conn = node_conn  # the node that granted it (maybe not ours: spillback)
        self.node_id = grant.node_id
        self.lease_id = grant.lease_id
        self.worker_id = grant.worker_id
        self.pid = grant.pid
        self.address = grant.address
        self.conn = conn
        self.queue = queue
        self.inflight = 0
        self.idle_since = 0.0
        self.retire = False  # a function's max_calls is reached: no more tasks; the worker goes when idle


class _SchedQueue:
    """Ready tasks of one resource shape, and the leases that serve them."""

    __slots__ = ("idle", "requesting", "resources", "strategy", "tasks", "unreachable_since", "unschedulable_since")

    def __init__(self, resources: dict[str, float], strategy: Any) -> None:
        self.resources = resources
        self.strategy = strategy
        self.unschedulable_since = 0.0  # when no node could ever run these (0: they can)
        self.unreachable_since = 0.0  # when asking for a lease first failed to reach a node
        self.tasks: deque[TaskSpec] = deque()
        self.idle: list[_Lease] = []
        self.requesting = 0


class TaskSubmitter:
    """Tasks from submission to result: dependencies, leases, pipelining, retries.

    Owns its queues and leases; reaches objects through the object table and the world
    through the core's links. Actor calls pass through here (dependencies, the outcome)
    and are handed to ``route_actor_call`` once their arguments are ready.
    """

    def __init__(
        self, links: CoreLinks, objects: ObjectTable, store: ObjectStore,
        route_actor_call: Callable[[TaskSpec], None], cancel_actor_call: Callable[[TaskSpec, bool], bool],
    ) -> None:
        self.links = links
        self.objects = objects
        self.store = store
        self._route_actor_call = route_actor_call
        self._cancel_actor_call = cancel_actor_call
        self._inbox: deque[TaskSpec] = deque()  # submitted from any thread, drained on the loop
        self._wake_pending = False
        self._queues: dict[tuple[Any, ...], _SchedQueue] = {}
        self._running: dict[bytes, tuple[TaskSpec, _Lease]] = {}
        self._by_return: dict[bytes, TaskSpec] = {}  # return id -> its task, until it finishes
        self._live: dict[bytes, TaskSpec] = {}
        # For recursive cancel: unfinished tasks submitted from inside one of this worker's tasks.
        self._children: dict[bytes, dict[bytes, TaskSpec]] = {}  # parent task id -> its children
        self._parent_of: dict[bytes, bytes] = {}  # child task id -> parent task id
        self._finished_events: list[list[Any]] = []
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._reclaim_until = 0.0
        self._spread_next = 0
        # max_calls: calls of such functions given to each worker (by worker id), across leases.
        self._worker_calls: dict[bytes, dict[bytes, int]] = {}
        self._view: list[m.NodeView] = []
        self._view_at = 0.0

    # ------------------------------------------------------------ what the reporter reads
    def has_news(self) -> bool:
        """True while tasks are live or finished ones wait to be reported."""
        return bool(self._live or self._finished_events)

    def live_rows(self, limit: int) -> tuple[dict[str, dict[str, int]], list[list[Any]]]:
        """Live tasks counted by function and state, and up to ``limit`` of them listed."""
        counts: dict[str, dict[str, int]] = {}
        live: list[list[Any]] = []
        for spec in snapshot(self._live).values():
            state = spec.state.name
            by_state = counts.setdefault(spec.fn.name, {})
            by_state[state] = by_state.get(state, 0) + 1
            if len(live) < limit:
                live.append([spec.task_id, spec.fn.name, state, spec.worker_pid, spec.node_id,
                             spec.submitted_at, spec.started_at, spec.job_id])
        return counts, live

    def take_finished(self) -> list[list[Any]]:
        """Finished tasks since the last call (and forget them)."""
        finished, self._finished_events = self._finished_events, []
        return finished

    def stop(self) -> None:
        """The core stops: no more lease sweeps."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def reclaim_idle(self) -> None:
        """The node wants its idle workers back: return idle leases now and for a while."""
        self._reclaim_until = time.monotonic() + RECLAIM_WINDOW_S
        self._sweep_idle_leases(all_of_them=True)

    def submit(self, spec: TaskSpec) -> list[ObjectRef[Any]]:
        """Queue a task (any thread); returns its refs at once."""
        spec.submitted_at = time.time()
        self._live[spec.task_id] = spec
        parent = current_task.get()
        if parent is not None and parent.task_id:  # submitted by a task running here: its child
            self._parent_of[spec.task_id] = parent.task_id
            self._children.setdefault(parent.task_id, {})[spec.task_id] = spec
        for rid in spec.return_ids:
            self._by_return[rid] = spec
        refs = self.objects.add_pending(spec.return_ids)
        self._inbox.append(spec)
        if not self._wake_pending:
            self._wake_pending = True
            self.links.call_soon(self._drain)
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

        when_ready = self.objects.when_ready
        for ref in deps:
            when_ready(ref, one)

    def _dispatch(self, spec: TaskSpec) -> None:
        """Dependencies are ready: fill them into the arguments and queue the task."""
        if spec.cancelled:
            self._abandon(spec)
            return
        if spec.deps:
            descs = {ref.id: self.objects.entry_for(ref).desc for ref in spec.deps}
            for desc in descs.values():
                if desc is not None and desc[0] == ser.ERROR:
                    # An upstream failure fails this task too, with the same error (as Ray).
                    self.finish(spec, [desc] * len(spec.return_ids))
                    self._abandon(spec)
                    return
            spec.args = [descs[a[1]] if a[0] == ser.REF else a for a in spec.args]
            spec.kwargs = {k: descs[a[1]] if a[0] == ser.REF else a for k, a in spec.kwargs.items()}
        if spec.actor is not None:
            self._route_actor_call(spec)
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
            self._route_actor_call(spec)

    def _pump(self, q: _SchedQueue) -> None:
        while q.tasks and q.idle:
            self._fill(q.idle.pop())
        want = len(q.tasks) - q.requesting
        while want > 0 and q.requesting < MAX_LEASE_REQUESTS:
            q.requesting += 1
            want -= 1
            self.links.spawn(self._request_lease(q), "request-lease")

    async def _request_lease(self, q: _SchedQueue) -> None:
        try:
            node_conn = self.links.node_connection()
            label = placement.LABEL_DEFAULT
            if q.strategy is not None:
                target = placement.lease_target(q.strategy, await self.cluster_view(), self._spread_next)
                self._spread_next += target.label == placement.LABEL_SPREAD
                label = target.label
                if target.node is not None and target.node.node_id != self.links.node_id:
                    node_conn = await self.links.peer(target.node.address)
            node_conn, reply = await request_lease(
                node_conn, q.resources, label, connect_to=self.links.peer, redirected_label=placement.LABEL_REDIRECTED,
            )
        except placement.Unplaceable as exc:  # a hard node affinity to a dead node
            q.requesting -= 1
            self._fail_queue(q, TaskUnschedulableError(str(exc)))
            return
        except RemoteCallError as exc:
            q.requesting -= 1
            self._unschedulable(q, str(exc))
            return
        except (ConnectionLost, OSError, ProtocolError) as exc:
            q.requesting -= 1
            self._unreachable(q, exc)
            return
        q.requesting -= 1
        q.unschedulable_since = q.unreachable_since = 0.0
        if isinstance(reply, m.LeaseRedirect):  # redirected too often: start over
            self._pump(q)
            return
        try:
            conn = await self.links.peer(reply.address)
        except OSError:
            node_conn.send(m.ReturnLease(lease_id=reply.lease_id, kill=True))
            self._pump(q)
            return
        self._lease_free(_Lease(reply, conn, q, node_conn))

    async def cluster_view(self) -> list[m.NodeView]:
        """The head's list of nodes, cached briefly."""
        now = time.monotonic()
        if now - self._view_at > 0.5:
            state: m.ClusterState = await self.links.request_head(m.GetClusterState(rid=0))
            self._view, self._view_at = state.nodes, now
        return self._view

    def _unschedulable(self, q: _SchedQueue, reason: str) -> None:
        """No node can run these tasks: say so at once, keep asking (a node may join), then fail.

        The wait is ``ASYNCRAY_UNSCHEDULABLE_TIMEOUT_S`` (default 5 s); ``get`` then raises
        TaskUnschedulableError naming the resource. Never a silent hang.
        """
        now = time.monotonic()
        timeout = float(os.environ.get("ASYNCRAY_UNSCHEDULABLE_TIMEOUT_S", DEFAULT_UNSCHEDULABLE_TIMEOUT_S))
        if not q.unschedulable_since:
            q.unschedulable_since = now
            names = sorted({t.fn.name for t in q.tasks})
            sys.stderr.write(
                f"asyncray: warning: {', '.join(names) or 'a task'} cannot be scheduled yet: {reason.removeprefix('unschedulable: ')}; "
                f"it fails in {timeout:g} s unless a node that fits joins\n"
            )
        if now - q.unschedulable_since >= timeout or self.links.closed:
            q.unschedulable_since = 0.0
            self._fail_queue(q, TaskUnschedulableError(f"task cannot be scheduled: {reason} (waited {timeout:g} s)"))
            return
        self.links.loop.call_later(UNSCHEDULABLE_RETRY_S, self._pump, q)

    def _unreachable(self, q: _SchedQueue, exc: BaseException) -> None:
        """The node to ask is gone or not answering: ask again shortly, for a bounded time.

        After ``ASYNCRAY_NODE_UNREACHABLE_TIMEOUT_S`` (default 30 s) the queued tasks fail
        with NodeDiedError: no retry loop without a bound (SPEC 7).
        """
        now = time.monotonic()
        timeout = float(os.environ.get("ASYNCRAY_NODE_UNREACHABLE_TIMEOUT_S", DEFAULT_UNREACHABLE_TIMEOUT_S))
        if not q.unreachable_since:
            q.unreachable_since = now
        if now - q.unreachable_since >= timeout or self.links.closed:
            q.unreachable_since = 0.0
            self._fail_queue(q, NodeDiedError(
                f"no node could be reached to run these tasks for {timeout:g} s ({exc}); "
                "is the cluster still running? Check it with 'asyncray status'"
            ))
            return
        self.links.loop.call_later(UNREACHABLE_RETRY_S, self._pump, q)

    def _fail_queue(self, q: _SchedQueue, exc: Exception) -> None:
        desc = ser.error_descriptor(exc)
        while q.tasks:
            spec = q.tasks.popleft()
            self.finish(spec, [desc] * len(spec.return_ids))

    def _fill(self, lease: _Lease) -> None:
        """Give a lease its next task, and more behind it while they are known to be short.

        ``async def`` tasks share their worker's event loop: up to ASYNC_TASKS_PER_WORKER of
        them run at once on one leased worker (they wait on I/O, not on the CPU).
        """
        tasks = lease.queue.tasks
        depth = 1 if lease.queue.strategy is not None else PIPELINE_DEPTH  # SPREAD means one each
        while tasks and not lease.retire:
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
        if spec.max_calls:  # Ray's max_calls: the worker is replaced after that many calls of it
            calls = self._worker_calls.setdefault(lease.worker_id, {})
            n = calls[spec.fn.fn_id] = calls.get(spec.fn.fn_id, 0) + 1
            lease.retire = lease.retire or n >= spec.max_calls
        spec.started_at = time.time()
        spec.node_id = lease.node_id
        spec.state = TaskState.RUNNING
        spec.worker_pid = lease.pid
        self._running[spec.task_id] = (spec, lease)
        lease.conn.send(self.push_message(lease.conn, spec))

    def push_message(self, conn: Connection, spec: TaskSpec) -> m.PushTask:
        fn = spec.fn
        sent: set[bytes] = conn.state.setdefault("fns", set())
        blob = None
        if fn.fn_id not in sent:
            sent.add(fn.fn_id)
            blob = fn.blob
        return m.PushTask(
            task_id=spec.task_id, fn_id=fn.fn_id, name=fn.name, args=spec.args, kwargs=spec.kwargs,
            return_ids=spec.return_ids, owner=self.links.address, fn_blob=blob,
            actor_id=spec.actor.actor_id if spec.actor is not None else None,
            method=spec.method, seq=spec.seq, caller=self.links.worker_id, job_id=spec.job_id,
            concurrency_group=spec.concurrency_group,
        )

    def _lease_free(self, lease: _Lease) -> None:
        q = lease.queue
        if lease.retire:
            if not lease.inflight:  # its last call is back: end the worker, free its resources
                self._worker_calls.pop(lease.worker_id, None)
                if lease.node_conn.is_open:
                    lease.node_conn.send(m.ReturnLease(lease_id=lease.lease_id, kill=True))
                self._pump(q)
            return
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
            self._sweep_handle = self.links.loop.call_later(IDLE_LEASE_S, self._sweep_idle_leases)

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
            self._sweep_handle = self.links.loop.call_later(IDLE_LEASE_S, self._sweep_idle_leases)

    def on_task_done(self, msg: m.TaskDone) -> None:
        """A leased worker finished one of our tasks: retry it, or record its outcome."""
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
        if retry and self.retryable(spec, msg.results[0]):
            spec.attempt += 1
            self._requeue(spec)
            self._lease_free(lease)
            return
        self.finish(spec, msg.results, msg.contained, lease.address)
        self._lease_free(lease)

    def retryable(self, spec: TaskSpec, desc: list[Any]) -> bool:
        """True when a failed call's exception is one its ``retry_exceptions`` allows."""
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

    def finish(
        self, spec: TaskSpec, results: list[Any], contained: list[Any] | None = None, holder: str = "",
    ) -> None:
        """Record a task's outcome in its return entries and wake waiters.

        ``contained`` lists, per result, the refs inside it: this process now owns the
        results, so it borrows those refs for as long as the results live, and tells
        ``holder`` (the worker that kept them alive meanwhile) that it took them over.
        """
        spec.state = TaskState.FINISHED
        if self._parent_of:
            self._forget_child(spec.task_id)
        failed = bool(results) and results[0][0] == ser.ERROR
        if failed and spec.rebuilding:  # the object was lost, and making it again failed too
            results = [ser.error_descriptor(ObjectReconstructionFailedError(
                f"the result of {spec.fn.name}() was lost with {spec.rebuilding}, and running the task again"
                f" to rebuild it failed: {_error_summary(results[0]).splitlines()[0]}"
            ))] * len(spec.return_ids)
        spec.rebuilding = ""
        # A task result in a store can be rebuilt by running the task again (Ray's lineage
        # reconstruction): keep what that needs while the result lives. Actor results cannot.
        # (With max_retries=0 only the spec is kept, to say why it is not rebuilt; no arguments.)
        lineage = spec if spec.actor is None and not failed else None
        if lineage is not None and spec.attempt < spec.max_retries:
            spec.lineage_deps, spec.lineage_contained = spec.deps, spec.contained
        spec.deps = []
        spec.contained = []
        if self._live.pop(spec.task_id, None) is not None and len(self._finished_events) < MAX_EVENTS_PER_REPORT:
            end = time.time()
            start = end - spec.duration if spec.duration else (spec.started_at or end)
            self._finished_events.append([
                spec.task_id, spec.fn.name, "FAILED" if failed else "FINISHED", spec.worker_pid, spec.node_id,
                spec.submitted_at, start, spec.job_id, end, _error_summary(results[0]) if failed else "",
            ])
        objects = self.objects
        for i, (rid, desc) in enumerate(zip(spec.return_ids, results, strict=False)):
            self._by_return.pop(rid, None)
            inner = objects.refs(contained[i]) if contained and contained[i] else None
            if inner and holder:
                objects.took_over(holder, inner)
            objects.set_result(rid, desc, inner, lineage if desc[0] == ser.STORED else None)

    def rebuild_lost(self, node_id: bytes, cause: str) -> None:
        """Our objects stored on a dead node: another copy the head knows of serves, else the
        tasks that made them run again, or the error says why not.

        Every lost object is marked pending at once (who asks waits), so a rebuilt task whose
        argument was lost too waits for that argument's rebuild (recursively). Each rebuild
        counts against the task's ``max_retries``.
        """
        lost = self.objects.lost_on(node_id)
        if not lost:
            return
        for oid, _size, _spec in lost:
            self.objects.set_rebuilding(oid)
        self.links.spawn(self._recover(node_id, cause, lost), "recover-lost-objects")

    async def _recover(self, node_id: bytes, cause: str, lost: list[tuple[bytes, int, TaskSpec | None]]) -> None:
        copies: dict[bytes, list[bytes]] = {}
        try:
            copies = await asyncio.wait_for(
                self.links.request_head(m.LocateObjects(rid=0, object_ids=[oid for oid, _, _ in lost])), LOCATE_TIMEOUT_S,
            )
        except (ConnectionLost, RemoteCallError, ProtocolError, TimeoutError) as exc:
            log.info("no other copies of %d lost objects could be looked up (%s): rebuilding them", len(lost), exc)
        rebuild: dict[bytes, TaskSpec] = {}
        where = f"node {node_id.hex()[:8]}, which died ({cause})"
        for oid, size, spec in lost:
            others = [nid for nid in copies.get(oid, []) if nid != node_id]
            if others:
                self.objects.set_found(oid, size, others[0], spec)
            elif spec is None:
                self.objects.set_lost(oid, ObjectLostError(
                    f"object {oid.hex()} was stored on {where}; it was made by put() or an actor method,"
                    " which cannot be run again (only task results are rebuilt from lineage)"
                ))
            elif spec.task_id not in rebuild and spec.attempt >= spec.max_retries:
                self.objects.set_lost(oid, ObjectLostError(
                    f"object {oid.hex()} was stored on {where}; the task {spec.fn.name}() that made it was"
                    f" already tried {spec.attempt + 1} time(s) (max_retries={spec.max_retries}), so it is not"
                    " run again to rebuild it"
                ))
            else:
                self.objects.set_rebuilding(oid)
                rebuild[spec.task_id] = spec
        for spec in rebuild.values():
            log.info("rebuilding the results of %s lost on %s", spec.fn.name, where)
            spec.attempt += 1
            spec.rebuilding = where
            spec.state, spec.cancelled = TaskState.SUBMITTED, False
            spec.args, spec.kwargs = spec.encoded_args, spec.encoded_kwargs
            spec.deps, spec.contained = spec.lineage_deps or [], spec.lineage_contained or []
            spec.lineage_deps = spec.lineage_contained = None
            self._live[spec.task_id] = spec
            for rid in spec.return_ids:
                self._by_return[rid] = spec
            self._resolve_dependencies(spec)

    def node_died(self, node_id: bytes, cause: str) -> None:
        """Tasks running on a dead node: retry them (``max_retries``) or fail with NodeDiedError."""
        lost, _idle = self._lose_leases(lambda lz: lz.node_id == node_id)
        for spec, _lease in lost:
            self._retry_or_fail(
                spec, f"the node {node_id.hex()[:8]} running", lambda what: NodeDiedError(f"{what}; the head says: {cause}"),
            )
        for conn in {id(lz.conn): lz.conn for _, lz in lost}.values():
            conn.abort()  # a frozen worker never answers: drop it (and its late results)

    def worker_lost(self, conn: Connection) -> None:
        """A leased worker's connection dropped: retry or fail what it was running.

        The lease goes back with ``kill``: a worker that went silent (frozen) but did not exit
        would otherwise keep its CPU; one that did exit is already gone (nothing happens).
        """
        lost, idle = self._lose_leases(lambda lz: lz.conn is conn)
        for lease in {id(lz): lz for lz in [*idle, *(lz for _, lz in lost)]}.values():
            if lease.node_conn.is_open:
                lease.node_conn.send(m.ReturnLease(lease_id=lease.lease_id, kill=True))
        for spec, lease in lost:
            self._retry_or_fail(spec, f"the worker process (pid {lease.pid}) running", WorkerCrashedError)

    def _lose_leases(self, gone: Callable[[_Lease], bool]) -> tuple[list[tuple[TaskSpec, _Lease]], list[_Lease]]:
        """Forget leases that are gone: their running tasks (taken out of the running table),
        and the idle leases dropped."""
        idle: list[_Lease] = []
        for q in self._queues.values():
            idle += [lz for lz in q.idle if gone(lz)]
            q.idle = [lz for lz in q.idle if not gone(lz)]
        lost = [(s, lz) for s, lz in self._running.values() if gone(lz)]
        for spec, lease in lost:
            self._running.pop(spec.task_id, None)
            self._worker_calls.pop(lease.worker_id, None)
        for lease in idle:
            self._worker_calls.pop(lease.worker_id, None)
        return lost, idle

    def _retry_or_fail(self, spec: TaskSpec, where: str, error: Callable[[str], Exception]) -> None:
        """A system failure took a running task: retry it within ``max_retries``, else fail it."""
        if spec.cancelled:
            self.finish(spec, [ser.error_descriptor(TaskCancelledError(f"task {spec.fn.name} was cancelled"))] * len(spec.return_ids))
        elif spec.attempt < spec.max_retries:
            spec.attempt += 1
            log.info("%s %s; retry %d of %d", where, spec.fn.name, spec.attempt, spec.max_retries)
            self._requeue(spec)
        else:
            what = (
                f"{where} {spec.fn.name}() died unexpectedly and the task was tried"
                f" {spec.attempt + 1} time(s) (max_retries={spec.max_retries})"
            )
            self.finish(spec, [ser.error_descriptor(error(what))] * len(spec.return_ids))

    # ------------------------------------------------------------ cancel
    def is_actor_call(self, ref: ObjectRef[Any]) -> bool:
        """True when ``ref`` is the result of an unfinished actor call this process made (any thread)."""
        spec = self._by_return.get(ref.id)
        return spec is not None and spec.actor is not None

    def cancel(self, ref: ObjectRef[Any], force: bool, recursive: bool = True) -> None:
        """Cancel the task that makes ``ref`` (loop thread).

        Only the owner (the process that submitted the task) can: a ref owned elsewhere
        (passed in to a task or an actor) is forwarded to its owner. A finished task, or a
        ref from ``put()``, is left alone.
        """
        spec = self._by_return.get(ref.id)
        if spec is not None:
            self.cancel_spec(spec, force, recursive)
        elif ref.owner and ref.owner != self.links.address:
            self.links.spawn(self._forward_cancel(ref.owner, ref.id, force, recursive), "forward-cancel")

    async def _forward_cancel(self, owner: str, object_id: bytes, force: bool, recursive: bool) -> None:
        msg = m.CancelObject(object_id=object_id, force=force, recursive=recursive)
        try:
            conn = self.links.route_to(owner)
            if conn is None:
                conn = await asyncio.wait_for(self.links.peer(owner), CANCEL_FORWARD_TIMEOUT_S)
            conn.send(msg)
        except (OSError, ConnectionLost, TimeoutError) as exc:
            # An owner that cannot be reached is gone, and its tasks' results with it.
            log.info("cancel(): the owner %s of object %s cannot be reached (%s)", owner, object_id.hex(), exc)

    def on_cancel_request(self, msg: m.CancelObject) -> None:
        """Another process asks us, the owner, to cancel the task behind one of our objects."""
        spec = self._by_return.get(msg.object_id)
        if spec is not None:
            self.cancel_spec(spec, msg.force, msg.recursive)

    def cancel_children(self, parent_task_id: bytes, force: bool) -> None:
        """Cancel, recursively, the unfinished tasks that ``parent_task_id`` submitted from here."""
        for spec in list(self._children.get(parent_task_id, {}).values()):
            self.cancel_spec(spec, force, True)

    def _forget_child(self, task_id: bytes) -> None:
        parent = self._parent_of.pop(task_id, None)
        if parent is not None:
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.pop(task_id, None)
                if not siblings:
                    del self._children[parent]

    def cancel_spec(self, spec: TaskSpec, force: bool, recursive: bool) -> None:
        """Cancel one of our tasks: a queued one fails at once, a running one is interrupted.

        Idempotent: a second cancel sends nothing more (unless it asks for ``force``). A
        running actor call is never force-cancelled (that would kill the actor; as in Ray).
        """
        if spec.state is TaskState.FINISHED or (spec.cancelled and not force):
            return
        spec.cancelled = True
        if spec.actor is not None:
            if spec.state is TaskState.RUNNING and self._cancel_actor_call(spec, False):
                return  # the actor answers: cancelled if queued there or async, else the call's own result
        elif spec.state is TaskState.RUNNING:
            item = self._running.get(spec.task_id)
            if item is not None:
                item[1].conn.send(m.CancelTask(task_id=spec.task_id, force=force, recursive=recursive))
                return
        if spec.state is TaskState.QUEUED:
            q = self._queues.get(spec.sched_key)
            if q is not None and spec in q.tasks:
                q.tasks.remove(spec)
        self.finish(spec, [ser.error_descriptor(TaskCancelledError(f"task {spec.fn.name} was cancelled"))] * len(spec.return_ids))

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
        max_calls: int = 0,
    ) -> TaskSpec:
        """Pickle arguments in the caller's thread (errors name the argument) and build the spec."""
        from asyncray._client.task_spec import encode_args

        task_id = _ids.new_id()
        arg_descs, kw_descs, deps, contained = encode_args(self.objects, fn.name, args, kwargs)
        return TaskSpec(contained=contained, encoded_args=arg_descs, encoded_kwargs=kw_descs,
            task_id=task_id, fn=fn, args=arg_descs, kwargs=kw_descs, deps=deps,
            return_ids=[_ids.return_id(task_id, i) for i in range(num_returns)],
            resources=resources, max_retries=max_retries, retry_exceptions=retry_exceptions, strategy=strategy,
            job_id=current_job_id(self.links.job_id), max_calls=max_calls,
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
