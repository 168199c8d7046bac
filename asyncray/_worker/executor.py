"""Runs pushed tasks: sync functions on the worker's main thread, ``async def`` ones on the loop.

A worker that hosts an actor hands its method calls to the actor host (``actor_host.py``);
one-at-a-time methods come back here to run on the main thread like tasks.
"""

from __future__ import annotations

import asyncio
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
        self._cancelled_queued: set[bytes] = set()
        self._done: deque[tuple[Any, ...]] = deque()
        self._done_scheduled = False
        self._cancel_requested: bytes | None = None
        self._task_thread_id = 0

    # ------------------------------------------------------------ dispatch (loop thread)
    def handle(self, conn: Connection, msg: m.Message) -> None:
        """Entry point from the core's message handler."""
        if isinstance(msg, m.PushTask):
            if msg.actor_id is not None:
                if self.actor_host is None:
                    self._reply_error(conn, msg, RuntimeError("this worker hosts no actor"))
                else:
                    self.actor_host.call(conn, msg)
                return
            self._start_task(conn, msg)
        elif isinstance(msg, m.CancelTask):
            self.cancel(msg.task_id, msg.force)
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
            task.add_done_callback(lambda _t: self._running.pop(msg.task_id, None))
        else:
            self._sync_queue.put((conn, msg, fn, None, None, None))

    def run_on_main_thread(
        self, conn: Connection, msg: m.PushTask, fn: Any, actor_id: bytes | None, job_id: bytes | None,
        after: Callable[[], None],
    ) -> None:
        """Queue a sync call for the main thread (one-at-a-time actor methods come here too).

        ``after`` runs on the loop once the reply is sent.
        """
        self._sync_queue.put((conn, msg, fn, actor_id, job_id, after))

    async def _localize_then_start(self, conn: Connection, msg: m.PushTask) -> None:
        await self.core.objects.localize([*msg.args, *msg.kwargs.values()])
        self._start_task(conn, msg)

    def cancel(self, task_id: bytes, force: bool) -> None:
        """Interrupt a running task; ``force`` ends this worker process."""
        if force:
            os._exit(1)
        if self.actor_host is not None and self.actor_host.cancel(task_id):
            return
        target = self._running.get(task_id)
        if target is None:
            self._cancelled_queued.add(task_id)  # still queued behind another task: skip it
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
            if msg.task_id in self._cancelled_queued:
                self._cancelled_queued.discard(msg.task_id)
                outcome: Outcome = ([failure_descriptor(TaskCancelledError(), msg.name)] * len(msg.return_ids), True, 0.0, [])
            elif actor_id is not None and host is not None and host.exiting:  # queued behind exit_actor()
                outcome = host.dead_outcome(msg)
            else:
                self._running[msg.task_id] = ident
                self._current_sync = msg.task_id
                try:
                    outcome = run_sync(self.core, msg, fn, actor_id, job_id)
                finally:
                    self._current_sync = None
                    self._running.pop(msg.task_id, None)
            # One wake-up of the loop per batch of finished tasks, not one per task.
            self._done.append((after, conn, msg.task_id, *outcome))
            del outcome, item, fn, after  # refs in the result must not live on in this frame
            if not self._done_scheduled:
                self._done_scheduled = True
                self.core.call_soon(self._flush_done)

    def _flush_done(self) -> None:
        self._done_scheduled = False
        done = self._done
        while done:
            after, *reply = done.popleft()
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


