"""The asyncio face of asyncray: coroutines with the facade's names and arguments (SPEC 3).

``await aio.init()`` runs the core on the caller's own loop, so nothing hops threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar, overload

from asyncray._client import api as _api
from asyncray._client import runtime as _runtime
from asyncray._client.ref import ObjectRef
from asyncray._client.remote_function import require_core
from asyncray.exceptions import GetTimeoutError

T = TypeVar("T")

__all__ = [
    "as_completed",
    "cancel",
    "get",
    "get_actor",
    "init",
    "kill",
    "put",
    "shutdown",
    "wait",
]


async def init(address: str | None = None, **kwargs: Any) -> _runtime.RuntimeInfo:
    """Start the runtime on the running loop; same arguments as ``asyncray.init``.

    Raises:
        RuntimeError: already initialized (unless ``ignore_reinit_error=True``).
    """
    address, opts = _api.normalize_init(address, kwargs)
    running: _runtime.RuntimeInfo | None = _api.already_running(opts)
    if running is not None:
        return running
    rt = _runtime.Runtime()
    try:
        await _runtime.start(rt, address, opts)
    except BaseException:
        await rt.stop()
        raise
    _runtime.set_current(rt)
    assert rt.info is not None
    return rt.info


async def shutdown() -> None:
    """Stop what ``init`` started. Safe to call twice."""
    rt = _runtime.current()
    if rt is None:
        return
    if rt.portal is not None:
        await asyncio.get_running_loop().run_in_executor(None, _runtime.stop_blocking)
        return
    _runtime.set_current(None)
    await rt.stop()


async def put(value: T) -> ObjectRef[T]:
    """Store a value; returns its ObjectRef."""
    ref: ObjectRef[T] = require_core("aio.put()").objects.put(value)
    return ref


@overload
async def get(refs: ObjectRef[T], *, timeout: float | None = None) -> T: ...
@overload
async def get(refs: Sequence[ObjectRef[T]], *, timeout: float | None = None) -> list[T]: ...
async def get(refs: Any, *, timeout: float | None = None) -> Any:
    """Await the value of a ref or the values of a list of refs (same order).

    Raises:
        GetTimeoutError: not ready within ``timeout`` seconds.
    """
    core = require_core("aio.get()")
    lst, single = _api.check_refs(refs, "get")
    return await core.objects.get_async(lst, timeout, single=single)


async def wait(
    refs: Any = None, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True, **kwargs: Any
) -> tuple[list[ObjectRef[Any]], list[ObjectRef[Any]]]:
    """``(ready, not_ready)`` in input order once ``num_returns`` are ready or time is up."""
    refs = _api.wait_object_refs_kw(refs, kwargs)
    lst = _api.check_wait(refs, num_returns, timeout)
    return await require_core("aio.wait()").objects.wait_async(lst, num_returns, timeout)


async def as_completed(refs: Any, timeout: float | None = None) -> AsyncIterator[ObjectRef[Any]]:
    """Yield refs in completion order (an async iterator).

    Raises:
        GetTimeoutError: ``timeout`` passed before all were ready.
    """
    lst, _ = _api.check_refs(refs, "as_completed")
    core = require_core("aio.as_completed()")
    futs = {core.objects.ready_future(r): r for r in lst}
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pending = set(futs)
    try:
        while pending:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise GetTimeoutError(f"as_completed() timed out after {timeout} s with {len(pending)} refs not ready")
            for f in [f for f in futs if f in done]:
                yield futs[f]
    finally:
        for f in pending:
            f.cancel()


async def cancel(ref: ObjectRef[Any], *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task behind ``ref`` (see ``asyncray.cancel``)."""
    _api.request_cancel(require_core("aio.cancel()"), ref, force, recursive)


async def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of a named actor. Raises ValueError when there is none."""
    from asyncray._actor.handle import lookup_actor

    return await _on_core(lookup_actor(require_core("aio.get_actor()"), name, namespace))


async def kill(actor: Any, *, no_restart: bool = True) -> None:
    """End an actor at once (see ``asyncray.kill``)."""
    from asyncray._actor.handle import kill_actor

    await _on_core(kill_actor(require_core("aio.kill()"), actor, no_restart))


async def _on_core(coro: Any) -> Any:
    """Await a coroutine that must run on the core's loop, from whatever loop we are on."""
    core = require_core("aio")
    if asyncio.get_running_loop() is core.loop:
        return await coro
    return await asyncio.wrap_future(core.run_coroutine(coro))
