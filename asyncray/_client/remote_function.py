"""``@remote`` on a function: a RemoteFunction whose ``.remote()`` submits a task."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from asyncray._client import context
from asyncray._client.options import TASK_OPTIONS, resources_of, validate
from asyncray._client.ref import ObjectRef
from asyncray._client.task_spec import CallCheck, FunctionDescriptor, check_for

if TYPE_CHECKING:
    from asyncray._client.core import Core

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_RETRIES = 3


def strategy_of(opts: dict[str, Any]) -> Any:
    """The scheduling strategy option, normalized (None for the default)."""
    strategy = opts.get("scheduling_strategy")
    return None if strategy in (None, "DEFAULT") else strategy

log = logging.getLogger(__name__)


def require_core(api: str, *, auto_init: bool = False) -> Core:
    """The running core, or a clear error telling the user to call init().

    With ``auto_init`` (``.remote()``, ``put``, ``get``, ``wait``: Ray's auto-init), a process
    with no runtime starts the embedded one first, unless ``ASYNCRAY_AUTO_INIT=0``.
    """
    core = context.get_core()
    enabled = os.environ.get("ASYNCRAY_AUTO_INIT", os.environ.get("RAY_ENABLE_AUTO_CONNECT", "1")) != "0"  # Ray's name too
    if core is None and auto_init and enabled:
        import asyncray

        log.info("%s started an embedded asyncray runtime (as Ray does); call asyncray.init() to choose", api)
        asyncray.init()
        core = context.get_core()
    if core is None:
        raise RuntimeError(f"{api} needs a running asyncray runtime; call asyncray.init() first")
    return core


class RemoteFunction(Generic[P, R]):
    """A function that runs as a task: ``f.remote(*args)`` returns an ``ObjectRef[R]`` at once.

    Typed: ``.remote()`` takes the parameters of the decorated function (a type checker
    checks them) and gives a ref to what it returns (for an ``async def``, what its
    coroutine returns). With ``num_returns`` other than 1 it returns a tuple of refs (or
    None), which the types cannot follow: annotate those yourself.
    """

    def __init__(self, fn: Callable[P, Any], options: dict[str, Any]) -> None:
        self._fn = fn
        self._name: str = getattr(fn, "__name__", type(fn).__name__)
        self._options = validate(options, TASK_OPTIONS, f"remote function {self._name}")
        self._descriptor: FunctionDescriptor | None = None
        self._descriptor_core: Any = None
        self._check: CallCheck | None = None  # built at the first .remote(): decoration stays cheap
        functools.update_wrapper(self, fn)
        self._is_async = inspect.iscoroutinefunction(fn)

    def __getstate__(self) -> dict[str, Any]:
        # Travels inside other functions (nested tasks); the per-process cache stays home.
        state = dict(self.__dict__)
        state["_descriptor"] = state["_descriptor_core"] = state["_check"] = None
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; "
            f"use {self._name}.remote(...) (or {self._name}.options(...).remote(...))"
        )

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]:
        """Submit a task; returns an ObjectRef (a tuple of them when ``num_returns > 1``)."""
        ref: ObjectRef[R] = self._submit(args, kwargs, self._options)
        return ref

    def options(self, **options: Any) -> BoundOptions[P, R]:
        """Per-call options, same names as ``@remote``; the signature stays as it was."""
        merged = dict(self._options)
        merged.update(validate(options, TASK_OPTIONS, f"remote function {self._name}"))
        return BoundOptions(self, merged)

    def _function_descriptor(self, core: Core) -> FunctionDescriptor:
        # Pickled once per runtime (the hash is its cache key on workers), not per call.
        if self._descriptor is None or self._descriptor_core is not core:
            self._descriptor = FunctionDescriptor.of(self._fn, self._name)
            self._descriptor_core = core
        return self._descriptor

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], opts: dict[str, Any]) -> Any:
        check = self._check
        if check is None:
            check = self._check = check_for(self._fn)
        check(args, kwargs)  # a call that cannot bind fails here, as it would locally, not on a worker
        core = require_core(f"{self._name}.remote()", auto_init=True)
        num_returns = opts.get("num_returns", 1)
        max_retries = opts.get("max_retries")
        spec = core.tasks.make_spec(
            self._function_descriptor(core), args, kwargs,
            num_returns=num_returns,
            resources=resources_of(opts, 1.0),
            max_retries=DEFAULT_MAX_RETRIES if max_retries is None else (10**9 if max_retries == -1 else max_retries),
            retry_exceptions=opts.get("retry_exceptions") or False,
            strategy=strategy_of(opts),
            max_calls=opts.get("max_calls") or 0,
        )
        refs: list[ObjectRef[Any]] = core.tasks.submit(spec)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return tuple(refs)


class BoundOptions(Generic[P, R]):
    """``f.options(...)``: call ``.remote()`` on it, with ``f``'s parameters."""

    def __init__(self, fn: RemoteFunction[P, R], options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = options

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]:
        """Submit with these options."""
        ref: ObjectRef[R] = self._fn._submit(args, kwargs, self._options)
        return ref
