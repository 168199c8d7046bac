"""asyncray: Ray's programming model on asyncio. ``import asyncray as ray`` and go.

This module is the sync facade (SPEC section 2): each function is a thin layer over the
async core, reached through a background loop thread. ``asyncray.aio`` has the coroutine
twins for async code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from asyncray import actor, exceptions  # actor: Ray's ray.actor namespace (ray.actor.exit_actor())
from asyncray._client import api as _api
from asyncray._client import options as _options
from asyncray._client import runtime as _runtime
from asyncray._client.ref import ObjectRef
from asyncray._client.remote_function import RemoteFunction, require_core
from asyncray.exceptions import (
    ActorDiedError,
    AsyncRayError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from asyncray._actor.handle import ActorClass

# Ray's name for ObjectRef before 1.0, which Ray 2.x still exports as an alias.
ObjectID = ObjectRef

logging.getLogger(__name__).addHandler(logging.NullHandler())

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
C = TypeVar("C")

__version__ = "0.1.0"

__all__ = [
    "ActorDiedError",
    "AsyncRayError",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectID",
    "ObjectLostError",
    "ObjectRef",
    "OutOfMemoryError",
    "SerializationError",
    "TaskCancelledError",
    "TaskError",
    "TaskUnschedulableError",
    "WorkerCrashedError",
    "actor",
    "as_completed",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]


def init(address: str | None = None, **kwargs: Any) -> _runtime.RuntimeInfo:
    """Start an embedded local cluster (or, later, connect to one) and return where it is.

    Args:
        address: None (and no ``ASYNCRAY_ADDRESS``) for an embedded cluster owned by this
            process; ``"auto"`` for the cluster started on this machine with
            ``asyncray start --head``; ``"host:port"`` for that head.
        **kwargs: ``num_cpus``, ``num_gpus``, ``resources``, ``object_store_memory``,
            ``namespace``, ``include_dashboard``, ``dashboard_host``, ``dashboard_port``,
            ``ignore_reinit_error``, ``log_to_driver`` (SPEC section 2); ``object_store_dir``
            (where the node's shared-memory directory goes, default /dev/shm) and
            ``object_spilling_dir`` (where objects spill when the store is full), both for
            the embedded cluster only (``asyncray start`` has the same options).

    Raises:
        RuntimeError: already initialized (unless ``ignore_reinit_error=True``).
    """
    address, opts = _api.normalize_init(address, kwargs)
    running: _runtime.RuntimeInfo | None = _api.already_running(opts)
    if running is not None:
        return running
    rt = _runtime.start_blocking(address, opts)
    assert rt.info is not None
    return rt.info


def shutdown() -> None:
    """Stop everything ``init()`` started. Safe to call twice."""
    rt = _runtime.current()
    if rt is not None and rt.portal is None:
        raise RuntimeError("the runtime was started with 'await asyncray.aio.init()'; stop it with 'await asyncray.aio.shutdown()'")
    _runtime.stop_blocking()


def is_initialized() -> bool:
    """True between ``init()`` and ``shutdown()``."""
    return _runtime.current() is not None


class _RemoteDecorator:
    """What ``@remote(**options)`` returns: apply it to a function or a class."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options

    @overload
    def __call__(self, obj: type[C]) -> ActorClass[C]: ...  # type: ignore[overload-overlap]  # classes are callables too; first match wins
    @overload
    def __call__(self, obj: Callable[P, Awaitable[R]]) -> RemoteFunction[P, R]: ...
    @overload
    def __call__(self, obj: Callable[P, R]) -> RemoteFunction[P, R]: ...
    def __call__(self, obj: Any) -> Any:
        return _make_remote(obj, self._options)


@overload
def remote(obj: type[C], /) -> ActorClass[C]: ...  # type: ignore[overload-overlap]  # classes are callables too; first match wins
@overload
def remote(obj: Callable[P, Awaitable[R]], /) -> RemoteFunction[P, R]: ...
@overload
def remote(obj: Callable[P, R], /) -> RemoteFunction[P, R]: ...
@overload
def remote(**options: Any) -> _RemoteDecorator: ...
def remote(*args: Any, **options: Any) -> Any:
    """Make a function a task or a class an actor; bare or with options.

    ``@remote``, ``@remote(num_cpus=2)``, or ``remote(cls)`` on an undecorated class.
    Typed: ``@remote`` on ``def f(x: int) -> str`` gives a ``RemoteFunction`` whose
    ``f.remote(x)`` is checked against ``f``'s parameters and returns ``ObjectRef[str]``
    (``async def`` too: the ref holds what the coroutine returns).
    """
    if len(args) == 1 and not options:
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "@asyncray.remote takes either a function or class alone (@asyncray.remote) or only keyword"
            f" options (@asyncray.remote(num_cpus=2)), got {len(args)} positional argument(s)"
            + (f" and options {sorted(options)}" if options else "")
        )
    if not options:  # Ray refuses it too: it is a slip for @remote or @remote(num_cpus=...)
        raise TypeError(
            "@asyncray.remote() with empty parentheses: write @asyncray.remote, or give options, "
            "e.g. @asyncray.remote(num_cpus=2)"
        )
    # Names are checked now, for an early error; values once we know a function from a class.
    _options.check_names(options, _options.TASK_OPTIONS | _options.ACTOR_OPTIONS, "@asyncray.remote")
    return _RemoteDecorator(options)


def _make_remote(obj: Any, options: dict[str, Any]) -> Any:
    from asyncray._actor.handle import ActorClass

    if isinstance(obj, RemoteFunction | ActorClass):
        raise TypeError(f"{getattr(obj, '__name__', 'it')} is already remote; apply @asyncray.remote once (use .options() to change options)")
    if isinstance(obj, type):
        return ActorClass(obj, options)
    if not callable(obj):
        raise TypeError(f"@asyncray.remote must be applied to a function or a class, got {type(obj).__name__}")
    return RemoteFunction(obj, options)


def method(*args: Any, **options: Any) -> Any:
    """Decorate an actor method with default options, e.g. ``@method(num_returns=2)``.

    Options: ``num_returns``, ``max_task_retries``, ``retry_exceptions``, ``concurrency_group``;
    unknown names raise ``ValueError`` and wrong types ``TypeError``, at decoration time.
    """
    if len(args) == 1 and not options and callable(args[0]):  # bare @method: nothing to set
        return args[0]
    if args:
        raise TypeError("@asyncray.method takes only keyword options, e.g. @asyncray.method(num_returns=2)")
    checked = _options.validate(options, _options.METHOD_DECORATOR_OPTIONS, "@asyncray.method")

    def decorate(fn: Any) -> Any:
        if not callable(fn):
            raise TypeError(f"@asyncray.method must be applied to a method, got {type(fn).__name__}")
        fn.__asyncray_method_options__ = checked
        return fn

    return decorate


def put(value: T) -> ObjectRef[T]:
    """Store a value in the object store; returns its ObjectRef."""
    ref: ObjectRef[T] = require_core("put()", auto_init=True).objects.put(value)
    return ref


@overload
def get(refs: ObjectRef[T], *, timeout: float | None = None) -> T: ...
@overload
def get(refs: Sequence[ObjectRef[T]], *, timeout: float | None = None) -> list[T]: ...
def get(refs: Any, *, timeout: float | None = None) -> Any:
    """Block for the value of a ref, or the values of a list of refs (same order).

    Raises:
        GetTimeoutError: not ready within ``timeout`` seconds.
        TaskError: the task raised; also an instance of the original exception class.
        RuntimeError: called from asyncray's own event loop; use ``await asyncray.aio.get``.
    """
    core = require_core("get()", auto_init=True)
    lst, single = _api.check_refs(refs, "get")
    if not core.objects.block_until_ready(lst, len(lst), timeout, "get"):
        missing = sum(1 for r in lst if not core.objects.is_ready(r))
        raise GetTimeoutError(f"get() timed out after {timeout} s with {missing} of {len(lst)} refs not ready")
    if single:
        return core.objects.load(lst[0])
    return [core.objects.load(r) for r in lst]


def wait(
    refs: Any = None, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True, **kwargs: Any
) -> tuple[list[ObjectRef[Any]], list[ObjectRef[Any]]]:
    """Return ``(ready, not_ready)`` once ``num_returns`` refs are ready or ``timeout`` passes.

    Both lists keep the input order.
    """
    refs = _api.wait_object_refs_kw(refs, kwargs)
    lst = _api.check_wait(refs, num_returns, timeout)
    core = require_core("wait()", auto_init=True)
    core.objects.block_until_ready(lst, num_returns, timeout, "wait")
    return core.objects.split_ready(lst, num_returns)


def as_completed(refs: Any, timeout: float | None = None) -> Iterator[ObjectRef[Any]]:
    """Yield refs as their values become ready (completion order).

    Raises:
        GetTimeoutError: ``timeout`` seconds passed before all were ready.
    """
    pending, _ = _api.check_refs(refs, "as_completed")
    deadline = None if timeout is None else time.monotonic() + timeout
    core = require_core("as_completed()")
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        core.objects.block_until_ready(pending, 1, left, "as_completed")
        ready = [r for r in pending if core.objects.is_ready(r)]
        if not ready:
            raise GetTimeoutError(f"as_completed() timed out after {timeout} s with {len(pending)} refs not ready")
        done = set(ready)
        pending = [r for r in pending if r not in done]
        yield from ready


def cancel(ref: ObjectRef[Any], *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task behind ``ref``: a pending one never runs, a running one is interrupted.

    ``get`` then raises TaskCancelledError; a finished task is left alone. Works from any
    process that holds the ref (the request goes to the ref's owner). ``force=True`` ends
    the worker process running it. ``recursive=True`` (the default, as in Ray) cancels the
    tasks it submitted too. Actor calls follow Ray: a queued call never runs, an async
    actor's running coroutine is cancelled, a running sync call finishes; ``force=True``
    on an actor call raises ValueError (use ``kill``).
    """
    _api.request_cancel(require_core("cancel()"), ref, force, recursive)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of a named actor.

    Raises:
        ValueError: no live actor has that name in that namespace.
    """
    from asyncray import aio

    return _run_on_core(aio.get_actor(name, namespace), "get_actor")


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """End an actor at once; its pending and later calls raise ActorDiedError."""
    from asyncray import aio

    _run_on_core(aio.kill(actor, no_restart=no_restart), "kill")


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes, as in Ray."""
    core = require_core("nodes()")
    return _api.nodes_view(_run_on_core(_api.cluster_state(core), "nodes"))


def cluster_resources() -> dict[str, float]:
    """Total resources of the live nodes."""
    core = require_core("cluster_resources()")
    return _api.sum_resources(_run_on_core(_api.cluster_state(core), "cluster_resources"), "resources")


def available_resources() -> dict[str, float]:
    """Free resources of the live nodes."""
    core = require_core("available_resources()")
    return _api.sum_resources(_run_on_core(_api.cluster_state(core), "available_resources"), "available")


def get_runtime_context() -> _api.RuntimeContext:
    """Ids of the calling job, node, worker, task and actor."""
    return _api.RuntimeContext(require_core("get_runtime_context()"))


def get_gpu_ids() -> list[Any]:
    """The GPU ids this task or actor may use, as in Ray: ints (0..N-1, or str when the node's
    ids came from its own CUDA_VISIBLE_DEVICES); empty without ``num_gpus`` and in the driver."""
    return _api.gpu_ids(require_core("get_gpu_ids()"))


def _run_on_core(coro: Any, api: str) -> Any:
    """Run a core coroutine from a blocking caller; never from the core's own loop."""
    core = require_core(f"{api}()")
    if core.on_loop_thread():
        coro.close()
        raise RuntimeError(
            f"asyncray.{api}() would block the event loop that runs asyncray itself; "
            f"use 'await asyncray.aio.{api}(...)' in async code"
        )
    return core.run_coroutine(coro).result()


def __getattr__(name: str) -> Any:
    # ``import asyncray as ray`` then ``ray.util.ActorPool``, as ``import ray`` allows; imported
    # on first use (about 30 ms that a script without it does not pay at start).
    if name == "util":
        import importlib

        return importlib.import_module("asyncray.util")
    raise AttributeError(f"module 'asyncray' has no attribute {name!r}")
