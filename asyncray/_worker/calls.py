"""Running one user call, shared by plain tasks and actor methods.

Decoding arguments, running sync code (in the calling thread) or async code (on the loop),
encoding results, turning exceptions into error descriptors with the user's traceback,
and replying to the submitter.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
import traceback
from typing import Any

from asyncray._client import context
from asyncray._store import serialization as ser
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection
from asyncray.actor import ActorExit
from asyncray.exceptions import ActorDiedError, SystemFailure, TaskCancelledError, TaskError


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Interrupt a thread running Python code by raising ``exc_type`` in it."""
    n: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    return n == 1


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
    """The descriptor for an exception raised by user code (or a cancellation, or exit_actor())."""
    if isinstance(exc, ActorExit):  # the caller sees the actor's death, not a user error (as in Ray)
        return ser.error_descriptor(ActorDiedError(str(exc)))
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


def needs_localizing(core: Any, msg: m.PushTask | m.CreateActor) -> bool:
    """True when an argument is stored on another node and must be copied here first."""
    store = core.store
    return any(ser.is_remote(d, store) for d in msg.args) or any(ser.is_remote(d, store) for d in msg.kwargs.values())


def decode_args(core: Any, msg: m.PushTask | m.CreateActor) -> tuple[list[Any], dict[str, Any]]:
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
