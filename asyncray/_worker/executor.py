"""Runs pushed tasks: sync functions on the task thread, ``async def`` ones on the loop."""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from typing import Any

from asyncray._client import context
from asyncray._store import serialization as ser
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection
from asyncray.exceptions import SystemFailure, TaskCancelledError, TaskError

log = logging.getLogger(__name__)

CANCEL_SIGNAL = signal.SIGUSR1


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Interrupt a thread running Python code by raising ``exc_type`` in it."""
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    return n == 1


class TaskExecutor:
    """Executes PushTask messages for one worker process."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.loop: asyncio.AbstractEventLoop = core.loop
        self.functions: dict[bytes, Any] = {}
        self.actor_host: Any = None  # set when this worker hosts an actor
        self._sync_queue: queue.SimpleQueue[tuple[Connection, m.PushTask, Any, Any, Any] | None] = queue.SimpleQueue()
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
            from asyncray._actor.host import ActorHost

            ActorHost.create(self, conn, msg)

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
            self.core.spawn(self._localize_then_start(conn, msg))
            return
        try:
            fn = self.function(msg)
        except Exception as exc:
            self._reply_error(conn, msg, exc)
            return
        if inspect.iscoroutinefunction(fn):
            task = self.loop.create_task(self._run_async(conn, msg, fn))
            self._running[msg.task_id] = task
            task.add_done_callback(lambda _t: self._running.pop(msg.task_id, None))
        else:
            self._sync_queue.put((conn, msg, fn, None, None))

    def run_on_main_thread(
        self, conn: Connection, msg: m.PushTask, fn: Any, actor_id: bytes | None, after: Any = None
    ) -> None:
        """Queue a sync call for the main thread (tasks, and one-at-a-time actor methods).

        ``after`` runs on the loop once the reply is sent.
        """
        self._sync_queue.put((conn, msg, fn, actor_id, after))

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
        if isinstance(target, asyncio.Task):
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
        """A submitter went away; its running tasks' results have nowhere to go."""
        if self.actor_host is not None:
            self.actor_host.connection_lost(conn)

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
            conn, msg, fn, actor_id, after = item
            if msg.task_id in self._cancelled_queued:
                self._cancelled_queued.discard(msg.task_id)
                outcome = ([failure_descriptor(TaskCancelledError(), msg.name)] * len(msg.return_ids), True, 0.0, [])
            else:
                self._running[msg.task_id] = ident
                self._current_sync = msg.task_id
                try:
                    host = self.actor_host
                    outcome = run_sync(
                        self.core, msg, fn, actor_id, host.job_id if actor_id is not None and host is not None else None
                    )
                finally:
                    self._current_sync = None
                    self._running.pop(msg.task_id, None)
            # One wake-up of the loop per batch of finished tasks, not one per task.
            self._done.append((after, conn, msg.task_id, *outcome))
            del outcome, item, fn, after  # refs in the result must not live on in this frame
            if not self._done_scheduled:
                self._done_scheduled = True
                self.loop.call_soon_threadsafe(self._flush_done)

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


# ---------------------------------------------------------------- shared with the actor host
def send_done(
    conn: Connection, task_id: bytes, results: list[Any], failed: bool, duration: float = 0.0,
    contained: list[list[Any]] | None = None,
) -> None:
    """Reply to the submitter, if it is still there.

    Refs inside the results are held here until the submitter, which now owns the results,
    registers as their borrower (``Core.hold_for_handoff``).
    """
    if not conn.is_open:
        return
    wire = None
    if contained and any(contained):
        core = context.get_core()
        if core is not None:
            core.objects.hold_for_handoff(conn, [r for refs in contained for r in refs])
        wire = [[[r.id, r.owner] for r in refs] for refs in contained]
    conn.send(m.TaskDone(task_id=task_id, results=results, failed=failed, duration=duration, contained=wire))


def failure_descriptor(exc: BaseException, name: str) -> list[Any]:
    """The descriptor for an exception raised by user code (or a cancellation)."""
    if isinstance(exc, TaskCancelledError | asyncio.CancelledError):
        return ser.error_descriptor(TaskCancelledError(f"task {name} was cancelled"))
    return ser.error_descriptor(TaskError.wrap(exc, name, user_traceback(exc)))


_RUNTIME_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.path.dirname(os.path.abspath(asyncio.__file__)),
    os.path.dirname(os.path.abspath(threading.__file__)) + os.sep + "concurrent",
    os.path.abspath(threading.__file__),
)


def user_traceback(exc: BaseException) -> str:
    """The traceback text without the runtime's own frames on top: users debug their code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIRS):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def needs_localizing(core: Any, msg: Any) -> bool:
    """True when an argument is stored on another node and must be copied here first."""
    store = core.store
    return any(ser.is_remote(d, store) for d in msg.args) or any(ser.is_remote(d, store) for d in msg.kwargs.values())


def decode_args(core: Any, msg: m.PushTask) -> tuple[list[Any], dict[str, Any]]:
    """Rebuild call arguments from their descriptors."""
    store = core.store
    args = [ser.load_descriptor(d, store) for d in msg.args]
    kwargs = {k: ser.load_descriptor(d, store) for k, d in msg.kwargs.items()}
    return args, kwargs


def encode_results(core: Any, msg: m.PushTask, value: Any) -> tuple[list[Any], list[list[Any]]]:
    """One descriptor per return id, and the refs each result contains.

    A wrong number of values is the user's error.
    """
    ids = msg.return_ids
    if len(ids) == 0:
        return [], []
    if len(ids) == 1:
        values = [value]
    else:
        try:
            values = list(value)
        except TypeError:
            raise ValueError(
                f"{msg.name}() has num_returns={len(ids)} but returned a {type(value).__name__}"
            ) from None
        if len(values) != len(ids):
            raise ValueError(f"{msg.name}() has num_returns={len(ids)} but returned {len(values)} values")
    descs, contained = [], []
    for v, oid in zip(values, ids, strict=True):
        refs: list[Any] = []
        with ser.collecting_refs(refs):
            descs.append(ser.make_descriptor(v, core.store, oid))
        contained.append(refs)
    return descs, contained


# descriptors, failed, seconds it ran, refs inside each result
Outcome = tuple[list[Any], bool, float, list[list[Any]]]


def task_context(msg: m.PushTask, actor_id: bytes | None, job_id: bytes | None) -> context.TaskContext:
    """Who runs: the task, its actor, and its job (an actor's own job for its methods)."""
    return context.TaskContext(msg.task_id, msg.name, actor_id, job_id or msg.job_id)


def run_sync(core: Any, msg: m.PushTask, fn: Any, actor_id: bytes | None, job_id: bytes | None = None) -> Outcome:
    """Run a sync function in the calling thread."""
    token = context.current_task.set(task_context(msg, actor_id, job_id))
    start = time.perf_counter()
    try:
        try:
            args, kwargs = decode_args(core, msg)
        except SystemFailure as exc:  # an argument is lost: say so, do not blame user code
            return [ser.error_descriptor(exc)] * len(msg.return_ids), True, 0.0, []
        value = fn(*args, **kwargs)
        del args, kwargs  # what the task kept of its arguments it holds itself (it borrows them)
        descs, contained = encode_results(core, msg, value)
        return descs, False, time.perf_counter() - start, contained
    except BaseException as exc:
        return [failure_descriptor(exc, msg.name)] * len(msg.return_ids), True, time.perf_counter() - start, []
    finally:
        context.current_task.reset(token)


async def run_async(
    core: Any, msg: m.PushTask, fn: Any, actor_id: bytes | None, job_id: bytes | None = None
) -> Outcome:
    """Run a coroutine function on this loop."""
    context.current_task.set(task_context(msg, actor_id, job_id))
    start = time.perf_counter()
    try:
        try:
            args, kwargs = decode_args(core, msg)
        except SystemFailure as exc:
            return [ser.error_descriptor(exc)] * len(msg.return_ids), True, 0.0, []
        value = await fn(*args, **kwargs)
        del args, kwargs
        descs, contained = encode_results(core, msg, value)
        return descs, False, time.perf_counter() - start, contained
    except BaseException as exc:
        return [failure_descriptor(exc, msg.name)] * len(msg.return_ids), True, time.perf_counter() - start, []
