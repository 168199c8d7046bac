"""Submitting tasks: dependencies, leases on workers, pipelining, retries, reports.

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
from collections.abc import Iterable
from typing import Any

from asyncray import _ids
from asyncray._client.objects import _Entry
from asyncray._client.ref import ObjectRef
from asyncray._client.task_spec import FunctionDescriptor, TaskSpec, TaskState
from asyncray._store import serialization as ser
from asyncray._threads import snapshot
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, ConnectionLost, RemoteCallError
from asyncray.exceptions import (
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

log = logging.getLogger(__name__)


# A lease nobody uses is given back after this long: long enough that a driver doing
# get(f.remote()) in a loop keeps its worker, short enough not to starve others.
IDLE_LEASE_S = 0.005
# After the node asks for idle leases back, leases that go idle are returned at once.
RECLAIM_WINDOW_S = 1.0
# At most this many lease requests in flight per resource shape.
MAX_LEASE_REQUESTS = 16
# Task reports to the head (dashboard, state API): how often, and how much at most.
REPORT_INTERVAL_S = 1.0
MAX_EVENTS_PER_REPORT = 20_000
MAX_LIVE_IN_REPORT = 1000
MAX_STORED_IN_REPORT = 1000
# A worker hosting an actor reports at least this often (mailbox depth, loop lag), even idle.
ACTOR_REPORT_INTERVAL_S = 2.0
# Tasks no node can run are retried this often, and fail after the timeout (env var overrides).
UNSCHEDULABLE_RETRY_S = 0.5
DEFAULT_UNSCHEDULABLE_TIMEOUT_S = 5.0
# A node that is full may point a lease request to another node, at most this many times.
MAX_REDIRECTS = 3
# Tasks of a function known to run shorter than this are pipelined: up to PIPELINE_DEPTH sit
# on one leased worker, so it never idles for a round trip. Unknown or longer functions get
# one at a time, so a long task never holds up another behind it.
SHORT_TASK_S = 0.002
PIPELINE_DEPTH = 4
ASYNC_TASKS_PER_WORKER = 100
MIN_SAMPLES_TO_PIPELINE = 5


class _Lease:
    __slots__ = (
        "address", "conn", "idle_since", "inflight", "lease_id", "node_conn", "node_id", "pid", "queue", "worker_id",
    )

    def __init__(self, grant: dict[str, Any], conn: Connection, queue: _SchedQueue, node_conn: Connection) -> None:
        self.node_conn = node_conn  # the node that granted it (maybe not ours: spillback)
        self.node_id: bytes = grant.get("node_id", b"")
        self.lease_id: int = grant["lease_id"]
        self.worker_id: bytes = grant["worker_id"]
        self.pid: int = grant["pid"]
        self.address: str = grant["address"]
        self.conn = conn
        self.queue = queue
        self.inflight = 0
        self.idle_since = 0.0


class _SchedQueue:
    """Ready tasks of one resource shape, and the leases that serve them."""

    __slots__ = ("idle", "requesting", "resources", "strategy", "tasks", "unschedulable_since")

    def __init__(self, resources: dict[str, float], strategy: Any) -> None:
        self.resources = resources
        self.strategy = strategy
        self.unschedulable_since = 0.0  # when no node could ever run these (0: they can)
        self.tasks: deque[TaskSpec] = deque()
        self.idle: list[_Lease] = []
        self.requesting = 0


class TaskSubmitter:
    """The task half of the core (mixed into ``Core``; state lives there)."""

    async def _report_loop(self) -> None:
        """Tell the head about this process's tasks and objects, about once a second."""
        quiet = True
        last_sent, last_mailbox, last_objects = 0.0, -1, 0
        owned = False
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if self.role == "worker" and self.node is not None and self.node.is_open:
                owns = any(e.owned for e in snapshot(self._objects).values())
                if owns != owned:  # the node must not reap a worker whose objects others may use
                    owned = owns
                    self.node.send(m.WorkerOwns(owns=owns))
            if self.head is None or not self.head.is_open:
                continue
            host = self.executor.actor_host if self.executor is not None else None
            n_objects = len(self._objects)
            if quiet and not self._live and not self._finished_events and n_objects == last_objects:
                if host is None:
                    continue  # nothing new since an empty report
                if host.mailbox == last_mailbox and time.monotonic() - last_sent < ACTOR_REPORT_INTERVAL_S:
                    continue  # an actor's worker: report changes at once, else every 2 s
            quiet = not self._live and not self._finished_events
            last_objects = n_objects
            last_sent, last_mailbox = time.monotonic(), host.mailbox if host is not None else -1
            self.head.send(self._task_report())

    def _task_report(self) -> m.TaskEvents:
        counts: dict[str, dict[str, int]] = {}
        live = []
        for spec in snapshot(self._live).values():
            state = spec.state.name
            by_state = counts.setdefault(spec.fn.name, {})
            by_state[state] = by_state.get(state, 0) + 1
            if len(live) < MAX_LIVE_IN_REPORT:
                live.append([spec.task_id, spec.fn.name, state, spec.worker_pid, spec.node_id,
                             spec.submitted_at, spec.started_at, spec.job_id])
        finished, self._finished_events = self._finished_events, []
        n_objects = len(self._objects)
        actor = None
        if self.executor is not None and self.executor.actor_host is not None:
            actor = self.executor.actor_host.stats()
        stored = []  # what this process owns in shared memory: [id, size, local refs, borrowers]
        for oid, entry in snapshot(self._objects).items():
            desc = entry.desc
            if entry.owned and desc is not None and desc[0] == ser.STORED:
                borrowers = len(entry.borrowers) if entry.borrowers else 0
                stored.append([oid, int(desc[2]), self._refcounts.get(oid, 0), borrowers])
                if len(stored) >= MAX_STORED_IN_REPORT:
                    break
        return m.TaskEvents(
            owner=self.worker_id, pid=os.getpid(), role=self.role, counts=counts, live=live, finished=finished,
            objects=[n_objects, 0], actor=actor, stored=stored,
        )

    def submit(self, spec: TaskSpec) -> list[ObjectRef]:
        """Queue a task (any thread); returns its refs at once."""
        spec.submitted_at = time.time()
        self._live[spec.task_id] = spec
        refs = []
        for rid in spec.return_ids:
            self._objects[rid] = _Entry(owned=True)
            self._by_return[rid] = spec
            refs.append(ObjectRef(rid, self.address, self))
        self._inbox.append(spec)
        if not self._wake_pending:
            self._wake_pending = True
            self.call_soon(self._drain)
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

        for ref in deps:
            self._when_ready(ref, one)

    def _dispatch(self, spec: TaskSpec) -> None:
        """Dependencies are ready: fill them into the arguments and queue the task."""
        if spec.cancelled:
            self._abandon(spec)
            return
        if spec.deps:
            descs = {ref.id: self._entry_for(ref).desc for ref in spec.deps}
            for desc in descs.values():
                if desc is not None and desc[0] == ser.ERROR:
                    # An upstream failure fails this task too, with the same error (as Ray).
                    self._finish(spec, [desc] * len(spec.return_ids))
                    self._abandon(spec)
                    return
            spec.args = [descs[a[1]] if a[0] == ser.REF else a for a in spec.args]
            spec.kwargs = {k: descs[a[1]] if a[0] == ser.REF else a for k, a in spec.kwargs.items()}
        if spec.actor is not None:
            self.actors.dispatch(spec)
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
            self.actors.dispatch(spec)

    def _pump(self, q: _SchedQueue) -> None:
        while q.tasks and q.idle:
            self._fill(q.idle.pop())
        want = len(q.tasks) - q.requesting
        while want > 0 and q.requesting < MAX_LEASE_REQUESTS:
            q.requesting += 1
            want -= 1
            self.spawn(self._request_lease(q))

    async def _request_lease(self, q: _SchedQueue) -> None:
        try:
            node_conn, label = await self._lease_target(q.strategy)
            grant = await node_conn.request(m.RequestLease(rid=0, resources=q.resources, label=label))
            for _ in range(MAX_REDIRECTS):  # spillback: that node is full, another is not
                if "redirect" not in grant:
                    break
                node_conn = await self._peer(grant["redirect"])
                grant = await node_conn.request(m.RequestLease(rid=0, resources=q.resources, label="affinity:redirected"))
        except TaskUnschedulableError as exc:  # a hard node affinity to a dead node
            q.requesting -= 1
            self._fail_queue(q, exc)
            return
        except RemoteCallError as exc:
            q.requesting -= 1
            self._unschedulable(q, str(exc))
            return
        except (ConnectionLost, OSError):
            q.requesting -= 1
            self.loop.call_later(0.2, self._pump, q)  # the node went away; try again shortly
            return
        q.requesting -= 1
        q.unschedulable_since = 0.0
        if "redirect" in grant:
            self._pump(q)
            return
        try:
            conn = await self._peer(grant["address"])
        except OSError:
            node_conn.send(m.ReturnLease(lease_id=grant["lease_id"], kill=True))
            self._pump(q)
            return
        self._lease_free(_Lease(grant, conn, q, node_conn))

    async def _lease_target(self, strategy: Any) -> tuple[Connection, str]:
        """Which node to ask for a lease: ours, or the one a strategy names."""
        assert self.node is not None
        if strategy is None:
            return self.node, ""
        nodes = [n for n in await self.cluster_view() if n["alive"]]
        if strategy == "SPREAD":
            if not nodes:
                return self.node, ""
            self._spread_next += 1
            node = nodes[self._spread_next % len(nodes)]
            return await self._node_conn(node), "affinity:spread"
        target = next((n for n in nodes if n["node_id"].hex() == strategy.node_id), None)
        if target is None:
            if strategy.soft:
                return self.node, ""
            raise TaskUnschedulableError(
                f"node {strategy.node_id} (NodeAffinitySchedulingStrategy, soft=False) is dead or unknown"
            )
        return await self._node_conn(target), "affinity:hard" if not strategy.soft else "affinity:soft"

    async def _node_conn(self, node: dict[str, Any]) -> Connection:
        if node["node_id"] == self.node_id and self.node is not None:
            return self.node
        return await self._peer(node["address"])

    async def cluster_view(self) -> list[dict[str, Any]]:
        """The head's list of nodes, cached briefly."""
        now = time.monotonic()
        if now - self._view_at > 0.5:
            assert self.head is not None
            state = await self.head.request(m.GetClusterState(rid=0))
            self._view, self._view_at = state["nodes"], now
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
        if now - q.unschedulable_since >= timeout or self._closed:
            q.unschedulable_since = 0.0
            self._fail_queue(q, TaskUnschedulableError(f"task cannot be scheduled: {reason} (waited {timeout:g} s)"))
            return
        self.loop.call_later(UNSCHEDULABLE_RETRY_S, self._pump, q)

    def _fail_queue(self, q: _SchedQueue, exc: Exception) -> None:
        desc = ser.error_descriptor(exc)
        while q.tasks:
            spec = q.tasks.popleft()
            self._finish(spec, [desc] * len(spec.return_ids))

    def _fill(self, lease: _Lease) -> None:
        """Give a lease its next task, and more behind it while they are known to be short.

        ``async def`` tasks share their worker's event loop: up to ASYNC_TASKS_PER_WORKER of
        them run at once on one leased worker (they wait on I/O, not on the CPU).
        """
        tasks = lease.queue.tasks
        depth = 1 if lease.queue.strategy is not None else PIPELINE_DEPTH  # SPREAD means one each
        while tasks:
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
        spec.started_at = time.time()
        spec.node_id = lease.node_id
        spec.state = TaskState.RUNNING
        spec.worker_pid = lease.pid
        self._running[spec.task_id] = (spec, lease)
        lease.conn.send(self._push_message(lease.conn, spec))

    def _push_message(self, conn: Connection, spec: TaskSpec) -> m.PushTask:
        fn = spec.fn
        sent: set[bytes] = conn.state.setdefault("fns", set())
        blob = None
        if fn.fn_id not in sent:
            sent.add(fn.fn_id)
            blob = fn.blob
        return m.PushTask(
            task_id=spec.task_id, fn_id=fn.fn_id, name=fn.name, args=spec.args, kwargs=spec.kwargs,
            return_ids=spec.return_ids, owner=self.address, fn_blob=blob,
            actor_id=spec.actor.actor_id if spec.actor is not None else None,
            method=spec.method, seq=spec.seq, caller=self.worker_id, job_id=spec.job_id,
        )

    def _lease_free(self, lease: _Lease) -> None:
        q = lease.queue
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
            self._sweep_handle = self.loop.call_later(IDLE_LEASE_S, self._sweep_idle_leases)

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
            self._sweep_handle = self.loop.call_later(IDLE_LEASE_S, self._sweep_idle_leases)

    def _on_task_done(self, msg: m.TaskDone) -> None:
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
        if retry and self._retryable(spec, msg.results[0]):
            spec.attempt += 1
            self._requeue(spec)
            self._lease_free(lease)
            return
        self._finish(spec, msg.results, msg.contained, lease.address)
        self._lease_free(lease)

    def _retryable(self, spec: TaskSpec, desc: list[Any]) -> bool:
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

    def _finish(
        self, spec: TaskSpec, results: list[Any], contained: list[Any] | None = None, holder: str = "",
    ) -> None:
        """Record a task's outcome in its return entries and wake waiters.

        ``contained`` lists, per result, the refs inside it: this process now owns the
        results, so it borrows those refs for as long as the results live, and tells
        ``holder`` (the worker that kept them alive meanwhile) that it took them over.
        """
        spec.state = TaskState.FINISHED
        spec.deps = []
        spec.contained = []
        if self._live.pop(spec.task_id, None) is not None and len(self._finished_events) < MAX_EVENTS_PER_REPORT:
            failed = bool(results) and results[0][0] == ser.ERROR
            end = time.time()
            start = end - spec.duration if spec.duration else (spec.started_at or end)
            self._finished_events.append([
                spec.task_id, spec.fn.name, "FAILED" if failed else "FINISHED", spec.worker_pid, spec.node_id,
                spec.submitted_at, start, spec.job_id, end, _error_summary(results[0]) if failed else "",
            ])
        for i, (rid, desc) in enumerate(zip(spec.return_ids, results, strict=False)):
            self._by_return.pop(rid, None)
            inner = [ObjectRef(oid, owner, self) for oid, owner in contained[i]] if contained and contained[i] else None
            if inner and holder:
                self.took_over(holder, inner)
            entry = self._objects.get(rid)
            if entry is None:
                if desc[0] == ser.STORED:
                    self.free_stored(rid)  # nobody holds a ref any more
                continue  # (refs inside it, taken over just now, are dropped with ``inner``)
            if inner:
                entry.contained = inner
            self._resolve_entry(entry, desc)
            self._maybe_free(rid)

    def _worker_lost(self, conn: Connection) -> None:
        """A leased worker's connection dropped: retry or fail what it was running."""
        for q in self._queues.values():
            q.idle = [lz for lz in q.idle if lz.conn is not conn]
        lost = [(s, lz) for s, lz in self._running.values() if lz.conn is conn]
        touched = set()
        for spec, lease in lost:
            self._running.pop(spec.task_id, None)
            touched.add(id(lease.queue))
            if spec.cancelled:
                self._finish(spec, [ser.error_descriptor(TaskCancelledError(f"task {spec.fn.name} was cancelled"))] * len(spec.return_ids))
            elif spec.attempt < spec.max_retries:
                spec.attempt += 1
                log.info("worker pid %d died running %s; retry %d of %d", lease.pid, spec.fn.name, spec.attempt, spec.max_retries)
                self._requeue(spec)
            else:
                err = WorkerCrashedError(
                    f"the worker process (pid {lease.pid}) running {spec.fn.name}() died unexpectedly"
                    f" and the task was tried {spec.attempt + 1} time(s) (max_retries={spec.max_retries})"
                )
                self._finish(spec, [ser.error_descriptor(err)] * len(spec.return_ids))
        self.actors.connection_lost(conn)

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        """Cancel the task that makes ``ref`` (loop thread)."""
        spec = self._by_return.get(ref.id)
        if spec is None or spec.state is TaskState.FINISHED:
            return
        spec.cancelled = True
        err = [ser.error_descriptor(TaskCancelledError(f"task {spec.fn.name} was cancelled"))] * len(spec.return_ids)
        if spec.actor is not None and spec.state is TaskState.RUNNING:
            if self.actors.cancel(spec, force):
                return
        elif spec.state is TaskState.RUNNING:
            item = self._running.get(spec.task_id)
            if item is not None:
                item[1].conn.send(m.CancelTask(task_id=spec.task_id, force=force))
            return
        if spec.state is TaskState.QUEUED:
            q = self._queues.get(spec.sched_key)
            if q is not None and spec in q.tasks:
                q.tasks.remove(spec)
        self._finish(spec, err)

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
    ) -> TaskSpec:
        """Pickle arguments in the caller's thread (errors name the argument) and build the spec."""
        from asyncray._client.task_spec import encode_args

        task_id = _ids.new_id()
        arg_descs, kw_descs, deps, contained = encode_args(self, fn.name, args, kwargs)
        return TaskSpec(contained=contained,
            task_id=task_id, fn=fn, args=arg_descs, kwargs=kw_descs, deps=deps,
            return_ids=[_ids.return_id(task_id, i) for i in range(num_returns)],
            resources=resources, max_retries=max_retries, retry_exceptions=retry_exceptions, strategy=strategy,
            job_id=self.current_job_id(),
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
