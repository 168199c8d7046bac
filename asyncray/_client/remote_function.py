"""``@remote`` on a function: a RemoteFunction whose ``.remote()`` submits a task."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from asyncray._client import context
from asyncray._client.options import TASK_OPTIONS, resources_of, validate
from asyncray._client.ref import ObjectRef
from asyncray._client.task_spec import FunctionDescriptor

if TYPE_CHECKING:
    from asyncray._client.core import Core

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_RETRIES = 3


def strategy_of(opts: dict[str, Any]) -> Any:
    """The scheduling strategy option, normalized (None for the default)."""
    strategy = opts.get("scheduling_strategy")
    return None if strategy in (None, "DEFAULT") else strategy


def require_core(api: str) -> Core:
    """The running core, or a clear error telling the user to call init()."""
    core = context.get_core()
    if core is None:
        raise RuntimeError(f"{api} needs a running asyncray runtime; call asyncray.init() first")
    return core


class RemoteFunction(Generic[P, R]):
    """A function that runs as a task: ``f.remote(*args)`` returns an ObjectRef at once."""

    def __init__(self, fn: Any, options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = validate(options, TASK_OPTIONS, f"remote function {fn.__name__}")
        self._descriptor: FunctionDescriptor | None = None
        self._descriptor_core: Any = None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self._is_async = inspect.iscoroutinefunction(fn)

    def __getstate__(self) -> dict[str, Any]:
        # Travels inside other functions (nested tasks); the per-process cache stays home.
        state = dict(self.__dict__)
        state["_descriptor"] = state["_descriptor_core"] = None
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._fn.__name__} cannot be called directly; "
            f"use {self._fn.__name__}.remote(...) (or {self._fn.__name__}.options(...).remote(...))"
        )

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Submit a task; returns an ObjectRef (a tuple of them when ``num_returns > 1``)."""
        return self._submit(args, kwargs, self._options)

    def options(self, **options: Any) -> _BoundOptions:
        """Per-call options, same names as ``@remote``."""
        merged = dict(self._options)
        merged.update(validate(options, TASK_OPTIONS, f"remote function {self._fn.__name__}"))
        return _BoundOptions(self, merged)

    def _function_descriptor(self, core: Any) -> FunctionDescriptor:
        # Pickled once per runtime (the hash is its cache key on workers), not per call.
        if self._descriptor is None or self._descriptor_core is not core:
            self._descriptor = FunctionDescriptor.of(self._fn, self._fn.__name__)
            self._descriptor_core = core
        return self._descriptor

    def _submit(self, args: Any, kwargs: dict[str, Any], opts: dict[str, Any]) -> Any:
        core = require_core(f"{self._fn.__name__}.remote()")
        num_returns = opts.get("num_returns", 1)
        max_retries = opts.get("max_retries")
        spec = core.tasks.make_spec(
            self._function_descriptor(core), args, kwargs,
            num_returns=num_returns,
            resources=resources_of(opts, 1.0),
            max_retries=DEFAULT_MAX_RETRIES if max_retries is None else (10**9 if max_retries == -1 else max_retries),
            retry_exceptions=opts.get("retry_exceptions") or False,
            strategy=strategy_of(opts),
        )
        refs: list[ObjectRef] = core.tasks.submit(spec)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return tuple(refs)


class _BoundOptions:
    """``f.options(...)``: call ``.remote()`` on it."""

    def __init__(self, fn: RemoteFunction[Any, Any], options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit with these options."""
        return self._fn._submit(args, kwargs, self._options)
