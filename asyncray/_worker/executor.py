"""Runs pushed tasks: sync functions on the worker's main thread, ``async def`` ones on the loop.

A worker that hosts an actor hands its method calls to the actor host (``actor_host.py``);
one-at-a-time methods come back here to run on the main thread like tasks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from asyncray._store import serialization as ser
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection
from asyncray._worker.actor_host import ActorHost
from asyncray._worker.calls import (
    Outcome,
    failure_descriptor,
    needs_localizing,
    raise_in_thread,
    run_async,
    run_sync,
    send_done,
)
from asyncray.exceptions import TaskCancelledError

log = logging.getLogger(__name__)

# A sync call for the main thread: reply target, call, function, actor id and job id (actor
# methods), and what to run on the loop once the reply is out.
_SyncCall = tuple[Connection, m.PushTask, Any, bytes | None, bytes | None, Callable[[], None] | None]

CANCEL_SIGNAL = signal.SIGUSR1
# Set (to anything) as in Ray: leave CUDA_VISIBLE_DEVICES alone, the user manages devices.
NOSET_CUDA_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"
# Ids of cancelled tasks not seen yet (their arguments are still being fetched), at most.
MAX_CANCELLED_UNSEEN = 1000


class GpuLease:
    """The GPU ids of the lease this worker serves, followed by a standing question to the node.

    The node answers the question (``GetNodeInfo(lease_after=...)``) when the worker is granted
    to a new holder, before that holder hears of the grant: a task always finds its lease's ids.
    Only on nodes with GPUs; elsewhere ``ids`` stays empty and nothing is asked.
    """

    def __init__(self, core: Any) -> None:
        self.core = core
        self.enabled = bool(os.environ.get("ASYNCRAY_GPU_IDS"))
        self.ids_are_str = bool(os.environ.get("ASYNCRAY_GPU_IDS_FROM_ENV"))  # as Ray: ids from CUDA_VISIBLE_DEVICES stay str
        self.lease_id = 0
        self.ids: list[str] = []
        self.watch: asyncio.Future[Any] | None = None
        self.held: list[tuple[Connection, m.Message]] | None = None  # calls waiting for the first answer

    def ask(self) -> asyncio.Future[Any]:
        """Ask the node about this worker's lease (answered once it is not ``lease_id``)."""
        assert self.core.node is not None
        fut: asyncio.Future[Any] = self.core.node.request(m.GetNodeInfo(rid=0, lease_after=self.lease_id))
        return fut

    def follow(self) -> None:
        """Take an answer that arrived (perhaps in this very loop turn, before its callback ran) and ask again."""
        fut = self.watch
        if fut is None or not fut.done():
            return
        self.watch = None
        if fut.cancelled() or fut.exception() is not None:
            return  # the node is gone: so is this worker
        self.apply(fut.result())
        self.watch = self.ask()
        self.watch.add_done_callback(lambda _: self.follow())

    def apply(self, answer: Any) -> None:
        """Use a lease's ids: CUDA_VISIBLE_DEVICES for every task of the lease (an actor's: its life).

        A lease without GPUs sees it empty, as in Ray, so it does not use GPUs others hold.
        """
        self.lease_id = int(answer.get("lease_id", 0))
        self.ids = [str(g) for g in answer.get("gpu_ids", [])]
        if not os.environ.get(NOSET_CUDA_ENV):
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.ids)

    def visible(self) -> list[Any]:
        """``get_gpu_ids()``: ints, or str when the node's ids came from its CUDA_VISIBLE_DEVICES (Ray's types)."""
        if self.ids_are_str:
            return list(self.ids)
        return [int(g) if g.isdigit() else g for g in self.ids]


class TaskExecutor:
    """Executes PushTask messages for one worker process."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.loop: asyncio.AbstractEventLoop = core.loop
        self.functions: dict[bytes, Any] = {}
        self.actor_host: ActorHost | None = None  # set once this worker's actor is built
        self._sync_queue: queue.SimpleQueue[_SyncCall | None] = queue.SimpleQueue()
        self._running: dict[bytes, Any] = {}  # task_id -> thread id or asyncio.Task
        self._current_sync: bytes | None = None
        # Sync calls queued for the main thread and not started: task id -> where the reply goes.
        # cancel() takes a call out of here and answers at once; the main thread then skips it.
        self._waiting: dict[bytes, tuple[Connection, m.PushTask]] = {}
        self._lock = threading.Lock()  # _waiting and _running move together between threads
        self._cancelled_queued: dict[bytes, None] = {}  # cancelled before they arrived here (an ordered set)
        self._done: deque[tuple[Any, ...]] = deque()
        self._done_scheduled = False
        self._cancel_requested: bytes | None = None
        self._task_thread_id = 0
        self.gpus = GpuLease(core)

    # ------------------------------------------------------------ dispatch (loop thread)
    def handle(self, conn: Connection, msg: m.Message) -> None:
        """Entry point from the core's message handler."""
        gpus = self.gpus
        if gpus.enabled and not isinstance(msg, m.CancelTask):
            if gpus.held is not None:
                gpus.held.append((conn, msg))
                return
            if gpus.watch is None and not gpus.lease_id:  # the first call: learn the lease before running it
                gpus.held = [(conn, msg)]
                self.core.spawn(self._learn_lease(), "learn-lease")
                return
            gpus.follow()
        self._dispatch(conn, msg)

    async def _learn_lease(self) -> None:
        gpus = self.gpus
        try:
            gpus.apply(await gpus.ask())
        except Exception as exc:  # the node is gone (this worker ends with it): run the calls without GPUs
            log.warning("could not learn this worker's lease from its node: %s", exc)
        else:
            gpus.watch = gpus.ask()
            gpus.watch.add_done_callback(lambda _: gpus.follow())
        held, gpus.held = gpus.held or [], None
        for conn, msg in held:
            self._dispatch(conn, msg)

    def _dispatch(self, conn: Connection, msg: m.Message) -> None:
        if isinstance(msg, m.PushTask):
            if msg.actor_id is not None:
                if self.actor_host is None:
                    self._reply_error(conn, msg, RuntimeError("this worker hosts no actor"))
                else:
                    self.actor_host.call(conn, msg)
                return
            self._start_task(conn, msg)
        elif isinstance(msg, m.CancelTask):
            self.cancel(msg.task_id, msg.force, msg.recursive)
        elif isinstance(msg, m.CreateActor):
            self.core.spawn(self._host_actor(conn, msg), "construct-actor")

    async def _host_actor(self, conn: Connection, msg: m.CreateActor) -> None:
        host = ActorHost(self.core, msg, self.run_on_main_thread)
        if await host.construct(conn, msg):
            self.actor_host = host

    def function(self, msg: m.PushTask) -> Any:
        """The function for a message, unpickled once per content hash."""
        fn = self.functions.get(msg.fn_id)
        if fn is None:
            if msg.fn_blob is None:
                raise RuntimeError(f"function {msg.name} was never sent to this worker")
            fn = ser.loads(msg.fn_blob)
            self.functions[msg.fn_id] = fn
        return fn

    def _start_task(self, conn: Connection, msg: m.PushTask) -> None:
        if self._cancelled_queued.pop(msg.task_id, 0) is None:  # cancelled while its arguments were fetched
            self._reply_cancelled(conn, msg)
            return
        if needs_localizing(self.core, msg):
            self.core.spawn(self._localize_then_start(conn, msg), "localize-task")
            return
        try:
            fn = self.function(msg)
        except Exception as exc:
            self._reply_error(conn, msg, exc)
            return
        if inspect.iscoroutinefunction(fn):
            task = self.core.spawn(self._run_async(conn, msg, fn), f"task-{msg.name}")
            self._running[msg.task_id] = task
            task.add_done_callback(functools.partial(self._async_ended, conn, msg))
        else:
            self._queue_sync((conn, msg, fn, None, None, None))

    def _async_ended(self, conn: Connection, msg: m.PushTask, task: asyncio.Future[Any]) -> None:
        self._running.pop(msg.task_id, None)
        if task.cancelled():  # cancelled before its coroutine began (it answers for itself once running)
            self._reply_cancelled(conn, msg)

    def _queue_sync(self, item: _SyncCall) -> None:
        with self._lock:
            self._waiting[item[1].task_id] = (item[0], item[1])
        self._sync_queue.put(item)

    def run_on_main_thread(
        self, conn: Connection, msg: m.PushTask, fn: Any, actor_id: bytes | None, job_id: bytes | None,
        after: Callable[[], None],
    ) -> None:
        """Queue a sync call for the main thread (one-at-a-time actor methods come here too).

        ``after`` runs on the loop once the reply is sent.
        """
        self._queue_sync((conn, msg, fn, actor_id, job_id, after))

    async def _localize_then_start(self, conn: Connection, msg: m.PushTask) -> None:
        await self.core.objects.localize([*msg.args, *msg.kwargs.values()])
        self._start_task(conn, msg)

    def cancel(self, task_id: bytes, force: bool, recursive: bool = True) -> None:
        """Cancel a task pushed here: one still queued is answered at once and never runs; a
        running one is interrupted (``force``: this worker process ends). ``recursive``: the
        tasks it submitted are cancelled first (this process owns them).

        A running call of a sync or threaded actor is not interrupted (actors have state, as
        in Ray); an async actor's coroutine is cancelled.
        """
        if recursive:
            self.core.tasks.cancel_children(task_id, force)
        with self._lock:
            waiting = self._waiting.pop(task_id, None)
            target = self._running.get(task_id) if waiting is None else None
        if waiting is not None:  # queued for the main thread: it skips the call when it comes to it
            self._reply_cancelled(*waiting)
            return
        host = self.actor_host
        if host is not None:
            if target is None:  # not on the main thread: the host's (a coroutine, or not started yet)
                host.cancel(task_id)
            return
        if target is None:
            self._note_cancelled(task_id)  # its arguments are still on their way: skip it once here
            return
        if force:
            # After this loop iteration, so that cancels of its children go out first.
            self.loop.call_soon(os._exit, 1)
            return
        if isinstance(target, asyncio.Future):
            target.cancel()
        elif target == threading.main_thread().ident:
            # The signal interrupts a blocking call (time.sleep, socket reads) as Ctrl-C would;
            # the handler raises only if this very task is still the one running.
            self._cancel_requested = task_id
            signal.pthread_kill(target, CANCEL_SIGNAL)
        else:
            raise_in_thread(target, TaskCancelledError)

    def _note_cancelled(self, task_id: bytes) -> None:
        self._cancelled_queued[task_id] = None
        if len(self._cancelled_queued) > MAX_CANCELLED_UNSEEN:  # ids of tasks that had finished already
            del self._cancelled_queued[next(iter(self._cancelled_queued))]

    def _reply_cancelled(self, conn: Connection, msg: m.PushTask) -> None:
        send_done(conn, msg.task_id, *_cancelled(msg))

    def _on_cancel_signal(self, signum: int, frame: Any) -> None:
        if self._cancel_requested is not None and self._cancel_requested == self._current_sync:
            self._cancel_requested = None
            raise TaskCancelledError("cancelled")

    def connection_lost(self, conn: Connection) -> None:
        """A submitter went away; its running tasks' results have nowhere to go (they are dropped)."""

    # ------------------------------------------------------------ running
    def serve_sync_tasks(self) -> None:
        """Run sync tasks, one at a time, on the calling thread (the worker's main thread).

        The main thread, so that cancel() can interrupt a blocking call with a signal.
        """
        signal.signal(CANCEL_SIGNAL, self._on_cancel_signal)
        ident = threading.get_ident()
        while True:
            item = self._sync_queue.get()
            if item is None:
                return
            conn, msg, fn, actor_id, job_id, after = item
            host = self.actor_host
            tid = msg.task_id
            with self._lock:
                queued = self._waiting.pop(tid, None) is not None  # else cancel() answered it already
                skip = self._cancelled_queued.pop(tid, 0) is None
                exiting = actor_id is not None and host is not None and host.exiting  # queued behind exit_actor()
                if queued and not skip and not exiting:
                    self._running[tid] = ident
                    self._current_sync = tid
            outcome: Outcome | None
            if not queued:
                outcome = None
            elif skip:
                outcome = _cancelled(msg)
            elif exiting:
                assert host is not None
                outcome = host.dead_outcome(msg)
            else:
                try:
                    outcome = run_sync(self.core, msg, fn, actor_id, job_id)
                except TaskCancelledError:  # the cancel signal landed just after the call returned
                    outcome = _cancelled(msg)
                finally:
                    self._current_sync = None
                    self._running.pop(tid, None)
            # One wake-up of the loop per batch of finished tasks, not one per task (no reply
            # for a call cancel() answered; ``after`` runs all the same).
            self._done.append((after, conn if outcome is not None else None, tid, *(outcome or ())))
            del outcome, item, fn, after  # refs in the result must not live on in this frame
            if not self._done_scheduled:
                self._done_scheduled = True
                self.core.call_soon(self._flush_done)

    def _flush_done(self) -> None:
        self._done_scheduled = False
        done = self._done
        while done:
            after, *reply = done.popleft()
            if reply[0] is not None:
                send_done(*reply)
            if after is not None:
                after()

    def stop(self) -> None:
        """Let ``serve_sync_tasks`` return."""
        self._sync_queue.put(None)

    async def _run_async(self, conn: Connection, msg: m.PushTask, fn: Any) -> None:
        send_done(conn, msg.task_id, *await run_async(self.core, msg, fn, None))

    def _reply_error(self, conn: Connection, msg: m.PushTask, exc: BaseException) -> None:
        desc = failure_descriptor(exc, msg.name)
        send_done(conn, msg.task_id, [desc] * len(msg.return_ids), True)


def _cancelled(msg: m.PushTask) -> Outcome:
    """The reply for a call that was cancelled."""
    return [failure_descriptor(TaskCancelledError(), msg.name)] * len(msg.return_ids), True, 0.0, []
