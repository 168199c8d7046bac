"""The worker side of an actor: builds the instance and runs its method calls.

* sync actor (default): one call at a time, on the worker's main thread, in each caller's
  order (the mailbox, ``mailbox.py``);
* threaded actor (``max_concurrency > 1``, no async methods): that many threads;
* async actor (any ``async def`` method): coroutines run concurrently on the worker's loop,
  at most ``max_concurrency`` at once; its sync methods run on the main thread, one at a
  time, so they cannot stall the coroutines (Ray runs them on the loop and stalls it).

For the dashboard the host reports its mailbox depth (calls received, not finished yet) and,
for an async actor, the worker's event-loop lag; ``stats()`` goes into the worker's
once-a-second report to the head.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asyncray._client import context
from asyncray._looplag import probe_loop_lag
from asyncray._service import supervised
from asyncray._store import serialization as ser
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection
from asyncray._worker.calls import (
    Outcome,
    decode_args,
    failure_descriptor,
    needs_localizing,
    raise_in_thread,
    run_async,
    run_sync,
    send_done,
)
from asyncray._worker.mailbox import Envelope, Mailbox
from asyncray.exceptions import TaskCancelledError

log = logging.getLogger(__name__)

# The loop-lag probe of an async actor: how often it sleeps, and over how many samples the
# worst lag is reported (0.5 s x 10: the last 5 s).
LAG_PROBE_INTERVAL_S = 0.5
LAG_SAMPLES = 10

# Queue a sync call for the worker's main thread: (reply target, call, function, actor id, job
# id, callback on the loop once the reply is out).
MainThreadRunner = Callable[[Connection, m.PushTask, Any, bytes | None, bytes | None, Callable[[], None]], None]


class ActorHost:
    """Hosts one actor instance in this worker process."""

    def __init__(self, core: Any, msg: m.CreateActor, run_on_main_thread: MainThreadRunner) -> None:
        self.core = core
        self.actor_id = msg.actor_id
        self.job_id = msg.job_id
        self.class_name = msg.name
        self.instance: Any = None
        self.max_concurrency = msg.max_concurrency
        self.is_async = False
        self._run_on_main_thread = run_on_main_thread
        self._pool: ThreadPoolExecutor | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._methods: dict[str, tuple[Any, bool]] = {}
        self._running: dict[bytes, Any] = {}  # task id -> asyncio.Task or thread id
        self._mailbox = Mailbox()
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)

    async def construct(self, conn: Connection, msg: m.CreateActor) -> bool:
        """Build the instance (off the loop); the head gets a Reply either way. True when built."""
        loop = asyncio.get_running_loop()
        side_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncray-actor-init")
        try:
            klass = ser.loads(msg.class_blob)
            self.is_async = any(
                inspect.iscoroutinefunction(v) for _, v in inspect.getmembers(klass, predicate=callable)
            )

            def build() -> Any:
                token = context.current_task.set(context.TaskContext(
                    b"", f"{self.class_name}.__init__", self.actor_id, self.job_id
                ))
                try:
                    args, kwargs = decode_args(self.core, msg)
                    return klass(*args, **kwargs)
                finally:
                    context.current_task.reset(token)

            await self.core.objects.localize([*msg.args, *msg.kwargs.values()])
            self.instance = await loop.run_in_executor(side_thread, build)
        except BaseException as exc:
            desc = failure_descriptor(exc, f"{self.class_name}.__init__")
            conn.reply(msg.rid, m.ActorBuilt(error=desc[1]))
            return False
        finally:
            side_thread.shutdown(wait=False)
        if self.is_async:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self.core.spawn(supervised(
                f"{self.class_name} loop-lag probe", functools.partial(probe_loop_lag, self._lags, LAG_PROBE_INTERVAL_S)
            ), "loop-lag-probe")
        elif self.max_concurrency > 1:
            self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="asyncray-actor")
        conn.reply(msg.rid, m.ActorBuilt(ok=True))
        return True

    @property
    def mailbox(self) -> int:
        """Calls received and not finished yet."""
        return len(self._mailbox)

    def stats(self) -> dict[str, Any]:
        """For the worker's report: mailbox depth and (async actors) the worst recent loop lag."""
        lag = round(max(self._lags, default=0.0) * 1000, 3) if self.is_async else None
        return {"actor_id": self.actor_id, "mailbox": self.mailbox, "loop_lag_ms": lag}

    def _method(self, name: str) -> tuple[Any, bool]:
        entry = self._methods.get(name)
        if entry is None:
            fn = getattr(self.instance, name)
            entry = self._methods[name] = (fn, inspect.iscoroutinefunction(fn))
        return entry

    # ------------------------------------------------------------ calls (loop thread)
    def call(self, conn: Connection, msg: m.PushTask) -> None:
        """A method call arrived: into the mailbox; run what is now in turn."""
        envelope = Envelope(msg, conn, ready=not needs_localizing(self.core, msg))
        if not envelope.ready:
            self.core.spawn(self._localize(envelope), "localize-actor-call")
        self._deliver(self._mailbox.put(envelope))

    async def _localize(self, envelope: Envelope) -> None:
        msg = envelope.msg
        try:
            await self.core.objects.localize([*msg.args, *msg.kwargs.values()])
        except BaseException:
            self._deliver(self._mailbox.drop(envelope))
            raise
        self._deliver(self._mailbox.made_ready(envelope))

    def _deliver(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            self._start(envelope.reply_to, envelope.msg)

    def _start(self, conn: Connection, msg: m.PushTask) -> None:
        try:
            fn, is_coro = self._method(msg.method or "")
        except AttributeError as exc:
            self._mailbox.finished()
            send_done(conn, msg.task_id, [failure_descriptor(exc, msg.name)] * len(msg.return_ids), True)
            return
        if is_coro:
            task = self.core.spawn(self._call_async(conn, msg, fn), f"actor-call-{msg.name}")
            self._running[msg.task_id] = task
            task.add_done_callback(lambda _t: self._call_ended(msg.task_id))
            return
        if self._pool is None:  # one at a time, in order: on the worker's main thread
            self._run_on_main_thread(conn, msg, fn, self.actor_id, self.job_id, self._mailbox.finished)
            return
        fut = self.core.loop.run_in_executor(self._pool, self._call_sync, msg, fn)
        fut.add_done_callback(lambda f: self._sync_done(conn, msg.task_id, f))

    def _call_ended(self, task_id: bytes) -> None:
        self._running.pop(task_id, None)
        self._mailbox.finished()

    def _sync_done(self, conn: Connection, task_id: bytes, fut: asyncio.Future[Outcome]) -> None:
        self._mailbox.finished()
        send_done(conn, task_id, *fut.result())

    def _call_sync(self, msg: m.PushTask, fn: Any) -> Outcome:
        self._running[msg.task_id] = threading.get_ident()
        try:
            return run_sync(self.core, msg, fn, self.actor_id, self.job_id)
        finally:
            self._running.pop(msg.task_id, None)

    async def _call_async(self, conn: Connection, msg: m.PushTask, fn: Any) -> None:
        assert self._semaphore is not None
        async with self._semaphore:
            outcome = await run_async(self.core, msg, fn, self.actor_id, self.job_id)
        send_done(conn, msg.task_id, *outcome)

    def cancel(self, task_id: bytes) -> bool:
        """Interrupt a running call; True if it was found."""
        target = self._running.get(task_id)
        if target is None:
            return False
        if isinstance(target, asyncio.Future):
            target.cancel()
        else:
            raise_in_thread(target, TaskCancelledError)
        return True
