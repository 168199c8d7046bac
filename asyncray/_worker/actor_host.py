"""The worker side of an actor: builds the instance and runs its method calls.

* sync actor (default): one call at a time, on the worker's main thread, in each caller's
  order (the mailbox, ``mailbox.py``);
* threaded actor (``max_concurrency > 1``, no async methods): that many threads;
* async actor (any ``async def`` method): coroutines run concurrently on the worker's loop,
  at most ``max_concurrency`` at once; its sync methods run on the main thread, one at a
  time, so they cannot stall the coroutines (Ray runs them on the loop and stalls it). The
  actor option ``sync_methods_on_loop=True`` asks for Ray's way: sync methods then run on
  the loop thread itself, never at the same time as a coroutine's step.
* concurrency groups (``@remote(concurrency_groups={"io": 2})`` and
  ``@method(concurrency_group="io")`` or ``.options(concurrency_group="io")`` per call): an
  async actor gives each group a semaphore of that size on the loop, a sync actor a thread
  pool of its own; calls without a group use the default group, sized by ``max_concurrency``.

``asyncray.actor.exit_actor()`` (and ``__ray_terminate__``) end the actor gracefully: calls
that have not started fail with ``ActorDiedError``, running ones finish, ``atexit`` handlers
run, the head records the actor dead for good, then the process exits.

For the dashboard the host reports its mailbox depth (calls received, not finished yet) and,
for an async actor, the worker's event-loop lag; ``stats()`` goes into the worker's
once-a-second report to the head.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asyncray import _ids
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
    run_async,
    run_sync,
    send_done,
)
from asyncray._worker.mailbox import Envelope, Mailbox
from asyncray.actor import ActorExit
from asyncray.exceptions import ActorDiedError, TaskCancelledError

log = logging.getLogger(__name__)

# The loop-lag probe of an async actor: how often it sleeps, and over how many samples the
# worst lag is reported (0.5 s x 10: the last 5 s).
LAG_PROBE_INTERVAL_S = 0.5
LAG_SAMPLES = 10

# Ids of calls cancelled before they started, kept at most (a cancel may also come just after a call finished).
MAX_CANCELLED_UNSEEN = 1000
# The death cause the head records (and callers read) for an actor that ended itself.
EXIT_CAUSE = "it exited via exit_actor()"
# After exit_actor(), calls already running may finish; past this the actor exits anyway, so
# that a method that never returns (a server loop) cannot keep a dead actor alive.
EXIT_DRAIN_TIMEOUT_S = 30.0
# How long the exiting actor waits for the head to record its death before exiting anyway.
EXIT_REPORT_TIMEOUT_S = 10.0
# The method that ends an actor from outside, queued behind earlier calls (Ray's name).
TERMINATE_METHOD = "__ray_terminate__"
# Where ``@asyncray.method(...)`` keeps a method's options (a function attribute).
METHOD_OPTIONS_ATTR = "__asyncray_method_options__"

# Queue a sync call for the worker's main thread: (reply target, call, function, actor id, job
# id, callback on the loop once the reply is out).
MainThreadRunner = Callable[[Connection, m.PushTask, Any, bytes | None, bytes | None, Callable[[], None]], None]

_current: ActorHost | None = None  # the actor this process hosts (a worker hosts at most one)


def current_host() -> ActorHost | None:
    """The actor host of this process, or None (a driver, a task worker, an actor not built yet)."""
    return _current


def _method_group(fn: Any) -> str:
    """The concurrency group ``@asyncray.method(concurrency_group=...)`` gave a method, or ""."""
    opts = getattr(fn, METHOD_OPTIONS_ATTR, None)
    group = opts.get("concurrency_group") if isinstance(opts, dict) else None
    return group if isinstance(group, str) else ""


def _check_groups(klass: type, groups: dict[str, int]) -> None:
    """Group sizes are ints >= 1, and every group a method names is declared."""
    for name, size in groups.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"concurrency group names must be non-empty strings, got {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"concurrency group {name!r} must have a size (an int >= 1), got {size!r}")
    for attr, member in inspect.getmembers(klass, predicate=callable):
        group = _method_group(member)
        if group and group not in groups:
            declared = ", ".join(sorted(groups)) or "none"
            raise ValueError(
                f"{klass.__name__}.{attr} is in concurrency group {group!r}, which the class does not declare "
                f"(declared: {declared}); add it to @remote(concurrency_groups={{...}})"
            )


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
        # Read with getattr: older heads send CreateActor without these fields.
        self.groups: dict[str, int] = dict(getattr(msg, "concurrency_groups", None) or {})
        self.sync_on_loop = bool(getattr(msg, "sync_methods_on_loop", False))
        self.exiting = False  # set (from any thread) by exit_actor(); read before each call starts
        self._draining = False  # the loop has begun ending the actor
        self._ending = False  # the exit thread runs
        self._run_on_main_thread = run_on_main_thread
        self._pools: dict[str, ThreadPoolExecutor] = {}  # sync actors: "" is the default group
        self._semaphores: dict[str, asyncio.Semaphore] = {}  # async actors: "" is the default group
        self._methods: dict[str, tuple[Any, bool, str]] = {}  # name -> (function, is coroutine, group)
        self._running: dict[bytes, Any] = {}  # task id -> asyncio.Task or thread id
        self._cancelled: dict[bytes, None] = {}  # calls cancelled before they started (an ordered set)
        self._mailbox = Mailbox()
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)

    async def construct(self, conn: Connection, msg: m.CreateActor) -> bool:
        """Build the instance (off the loop); the head gets a Reply either way. True when built."""
        global _current
        loop = asyncio.get_running_loop()
        side_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncray-actor-init")
        try:
            klass = ser.loads(msg.class_blob)
            self.is_async = any(
                inspect.iscoroutinefunction(v) for _, v in inspect.getmembers(klass, predicate=callable)
            )
            _check_groups(klass, self.groups)

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
            self._semaphores[""] = asyncio.Semaphore(self.max_concurrency)
            for name, size in self.groups.items():
                self._semaphores[name] = asyncio.Semaphore(size)
            self.core.spawn(supervised(
                f"{self.class_name} loop-lag probe", functools.partial(probe_loop_lag, self._lags, LAG_PROBE_INTERVAL_S)
            ), "loop-lag-probe")
        else:
            if self.max_concurrency > 1:  # else the default group runs on the main thread
                self._pools[""] = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="asyncray-actor")
            for name, size in self.groups.items():
                self._pools[name] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"asyncray-actor-{name}")
        _current = self
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

    def _method(self, name: str) -> tuple[Any, bool, str]:
        entry = self._methods.get(name)
        if entry is None:
            if name == TERMINATE_METHOD:
                fn: Any = self._aterminate if self.is_async else self._terminate
            else:
                fn = getattr(self.instance, name)
            entry = self._methods[name] = (fn, inspect.iscoroutinefunction(fn), _method_group(fn))
        return entry

    # ------------------------------------------------------------ calls (loop thread)
    def call(self, conn: Connection, msg: m.PushTask) -> None:
        """A method call arrived: into the mailbox; run what is now in turn."""
        if self.exiting:
            send_done(conn, msg.task_id, *self.dead_outcome(msg))
            return
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
        if self.exiting:
            self._fail(conn, msg, None)
            return
        if self._cancelled.pop(msg.task_id, 0) is None:  # cancelled while it waited in the mailbox
            self._fail(conn, msg, TaskCancelledError())
            return
        try:
            fn, is_coro, group = self._method(msg.method or "")
        except AttributeError as exc:
            self._fail(conn, msg, exc)
            return
        # A per-call .options(concurrency_group=...) wins over the method's own group.
        group = getattr(msg, "concurrency_group", "") or group
        if group and group not in self.groups:
            declared = ", ".join(sorted(self.groups)) or "none"
            self._fail(conn, msg, ValueError(
                f"{msg.name}: actor class {self.class_name} has no concurrency group {group!r} (declared: {declared})"
            ))
            return
        if is_coro:
            task = self.core.spawn(self._call_async(conn, msg, fn, self._semaphores[group]), f"actor-call-{msg.name}")
            self._running[msg.task_id] = task
            task.add_done_callback(lambda t: self._call_ended(msg.task_id, conn, msg, t))
            return
        pool = None if self.is_async else self._pools.get(group)
        if pool is not None:
            fut = self.core.loop.run_in_executor(pool, self._call_sync, msg, fn)
            fut.add_done_callback(lambda f: self._sync_done(conn, msg.task_id, f))
        elif self.is_async and self.sync_on_loop:  # Ray's way: on the loop, between coroutine steps
            outcome = run_sync(self.core, msg, fn, self.actor_id, self.job_id)
            send_done(conn, msg.task_id, *outcome)
            self._finished()
        else:  # one at a time, in order: on the worker's main thread
            self._run_on_main_thread(conn, msg, fn, self.actor_id, self.job_id, self._finished)

    def _fail(self, conn: Connection, msg: m.PushTask, exc: BaseException | None) -> None:
        """Answer a delivered call that will not run: with ``exc``, or (None) the actor's exit."""
        self._finished()
        if exc is None:
            send_done(conn, msg.task_id, *self.dead_outcome(msg))
        else:
            send_done(conn, msg.task_id, [failure_descriptor(exc, msg.name)] * len(msg.return_ids), True)

    def _finished(self) -> None:
        self._mailbox.finished()
        if self._draining:
            self._maybe_end()

    def _call_ended(self, task_id: bytes, conn: Connection, msg: m.PushTask, task: asyncio.Future[Any]) -> None:
        self._running.pop(task_id, None)
        if task.cancelled():  # cancelled while it waited for its turn (a running call answers for itself)
            send_done(conn, task_id, [failure_descriptor(TaskCancelledError(), msg.name)] * len(msg.return_ids), True)
        self._finished()

    def _sync_done(self, conn: Connection, task_id: bytes, fut: asyncio.Future[Outcome]) -> None:
        send_done(conn, task_id, *fut.result())
        self._finished()

    def _call_sync(self, msg: m.PushTask, fn: Any) -> Outcome:
        if self.exiting:
            return self.dead_outcome(msg)
        if self._cancelled.pop(msg.task_id, 0) is None:  # cancelled while it waited for a thread
            return [failure_descriptor(TaskCancelledError(), msg.name)] * len(msg.return_ids), True, 0.0, []
        self._running[msg.task_id] = threading.get_ident()
        try:
            return run_sync(self.core, msg, fn, self.actor_id, self.job_id)
        finally:
            self._running.pop(msg.task_id, None)

    async def _call_async(self, conn: Connection, msg: m.PushTask, fn: Any, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            if self.exiting:  # waited for its turn while the actor decided to exit: never starts
                outcome = self.dead_outcome(msg)
            else:
                outcome = await run_async(self.core, msg, fn, self.actor_id, self.job_id)
        send_done(conn, msg.task_id, *outcome)

    def cancel(self, task_id: bytes) -> bool:
        """Cancel a call as Ray does: an async call's coroutine is cancelled, a call that has
        not started never runs, and a running sync call is left to finish (actors have state).
        True if the call was running."""
        target = self._running.get(task_id)
        if target is None:
            self._cancelled[task_id] = None  # skipped when its turn comes
            if len(self._cancelled) > MAX_CANCELLED_UNSEEN:  # ids of calls that had finished already
                del self._cancelled[next(iter(self._cancelled))]
            return False
        if isinstance(target, asyncio.Future):
            target.cancel()
        return True

    # ------------------------------------------------------------ exit_actor()
    def death_message(self) -> str:
        """What callers read in the ActorDiedError of an actor that exited (as the head words it)."""
        return f"actor {self.class_name}({_ids.short(self.actor_id)}) is dead: {EXIT_CAUSE}"

    def dead_outcome(self, msg: m.PushTask) -> Outcome:
        """The reply for a call that never starts because the actor exits."""
        desc = ser.error_descriptor(ActorDiedError(self.death_message()))
        return [desc] * len(msg.return_ids), True, 0.0, []

    def request_exit(self) -> ActorExit:
        """exit_actor() (any thread): no call starts from now on; returns the exception to raise."""
        self.exiting = True  # first, and synchronously: the main thread may pick its next call at once
        self.core.call_soon(self._begin_exit)
        return ActorExit(self.death_message())

    def _terminate(self) -> None:
        """``__ray_terminate__`` of a sync or threaded actor: runs in turn, after earlier calls."""
        raise self.request_exit()

    async def _aterminate(self) -> None:
        """``__ray_terminate__`` of an async actor (on the loop, after earlier calls started)."""
        raise self.request_exit()

    def _begin_exit(self) -> None:
        if self._draining:
            return
        self._draining = True
        for envelope in self._mailbox.drain():  # received, never delivered: they fail now
            send_done(envelope.reply_to, envelope.msg.task_id, *self.dead_outcome(envelope.msg))
        self.core.loop.call_later(EXIT_DRAIN_TIMEOUT_S, self._end)
        self._maybe_end()

    def _maybe_end(self) -> None:
        if len(self._mailbox) == 0:
            self._end()

    def _end(self) -> None:
        """Every started call is answered (or the drain timed out): exit, off the loop."""
        if self._ending:
            return
        self._ending = True
        # A thread of its own: atexit handlers may block, and the main thread may be busy.
        threading.Thread(target=self._exit_process, name="asyncray-actor-exit", daemon=True).start()

    def _exit_process(self) -> None:
        def run_atexit() -> None:
            try:
                atexit._run_exitfuncs()  # what a normal interpreter exit runs (it reports their errors)
            except BaseException:
                log.exception("atexit handlers of actor %s failed", self.class_name)

        handlers = threading.Thread(target=run_atexit, name="asyncray-atexit", daemon=True)
        handlers.start()
        handlers.join(EXIT_REPORT_TIMEOUT_S)  # a handler that never returns must not keep the actor up
        if handlers.is_alive():
            log.warning("atexit handlers of actor %s still run after %g s; exiting anyway",
                        self.class_name, EXIT_REPORT_TIMEOUT_S)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass

        async def report() -> None:
            # The head marks it dead (no restart) before this process goes, so that losing
            # the connection is not taken for a crash.
            await self.core.request_head(m.KillActor(rid=0, actor_id=self.actor_id, no_restart=True, reason=EXIT_CAUSE))

        try:
            self.core.run_coroutine(report()).result(EXIT_REPORT_TIMEOUT_S)
        except Exception as exc:
            log.warning("actor %s could not tell the head it exited (%s); exiting anyway", self.class_name, exc)
        os._exit(0)
