"""``@remote`` on a class: ActorClass, ActorHandle and ActorMethod (what users touch)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from asyncray import _ids
from asyncray._client import context
from asyncray._client.options import ACTOR_OPTIONS, METHOD_OPTIONS, resources_of, validate
from asyncray._client.remote_function import require_core
from asyncray._client.task_spec import FunctionDescriptor, encode_args

if TYPE_CHECKING:
    from asyncray._actor.client import ActorClient

C = TypeVar("C")

DEFAULT_ASYNC_CONCURRENCY = 1000


def class_meta(cls: type) -> dict[str, Any]:
    """What a handle needs to know about the class: its name and methods."""
    methods: dict[str, dict[str, Any]] = {}
    for name, member in inspect.getmembers(cls):
        if not callable(member) or (name.startswith("__") and name.endswith("__")):
            continue
        fn = inspect.unwrap(member) if not isinstance(member, staticmethod | classmethod) else member.__func__
        opts = getattr(fn, "__asyncray_method_options__", {})
        methods[name] = {
            "num_returns": opts.get("num_returns", 1),
            "is_async": inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
        }
    return {
        "class_name": cls.__name__,
        "methods": methods,
        "is_async": any(m["is_async"] for m in methods.values()),
    }


class ActorClass(Generic[C]):
    """A class made remote: ``Cls.remote(*args)`` starts an actor and returns its handle at once."""

    def __init__(self, cls: type[C], options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = validate(options, ACTOR_OPTIONS, f"actor class {cls.__name__}")
        self._meta = class_meta(cls)
        self._blob: FunctionDescriptor | None = None
        self._blob_core: Any = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __getstate__(self) -> dict[str, Any]:
        # Travels inside functions that create actors; the per-process cache stays home.
        state = dict(self.__dict__)
        state["_blob"] = state["_blob_core"] = None
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self._cls.__name__} cannot be instantiated directly; "
            f"use {self._cls.__name__}.remote(...)"
        )

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[C]:
        """Start an actor; returns its handle without waiting for the constructor."""
        return self._create(args, kwargs, self._options)

    def options(self, **options: Any) -> _ActorClassOptions[C]:
        """Per-actor options, same names as ``@remote`` on a class."""
        merged = dict(self._options)
        merged.update(validate(options, ACTOR_OPTIONS, f"actor class {self._cls.__name__}"))
        return _ActorClassOptions(self, merged)

    def _create(self, args: Any, kwargs: dict[str, Any], opts: dict[str, Any]) -> ActorHandle[C]:
        core = require_core(f"{self._cls.__name__}.remote()")
        if self._blob is None or self._blob_core is not core:
            self._blob = FunctionDescriptor.of(self._cls, self._cls.__name__)
            self._blob_core = core
        name = opts.get("name") or ""
        if name and not isinstance(name, str):
            raise ValueError(f"actor name must be a string, got {type(name).__name__}")
        namespace = opts.get("namespace") or getattr(core, "namespace", "default")
        arg_descs, kw_descs, deps, contained = encode_args(core.objects, f"{self._cls.__name__}.__init__", args, kwargs)
        meta = dict(self._meta)
        meta["max_task_retries"] = opts.get("max_task_retries") or 0
        default_conc = DEFAULT_ASYNC_CONCURRENCY if meta["is_async"] else 1
        spec = {
            "class_blob": self._blob.blob,
            "resources": resources_of(opts, 0.0),
            "max_restarts": opts.get("max_restarts") or 0,
            "max_concurrency": opts.get("max_concurrency") or default_conc,
            "detached": opts.get("lifetime") == "detached",
            "owner": core.address,
            "job_id": core.current_job_id(),
            "args": arg_descs,
            "kwargs": kw_descs,
            "affinity": _affinity(opts.get("scheduling_strategy")),
        }
        return core.actors.create(
            _ids.new_id(), name, str(namespace), bool(opts.get("get_if_exists")), meta, spec, deps, contained
        )


def _affinity(strategy: Any) -> dict[str, Any] | None:
    """A NodeAffinitySchedulingStrategy as the head reads it (SPREAD: the head's default pick)."""
    from asyncray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return {"node_id": strategy.node_id, "soft": strategy.soft}
    return None


class _ActorClassOptions(Generic[C]):
    def __init__(self, cls: ActorClass[C], options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[C]:
        """Start the actor with these options."""
        return self._cls._create(args, kwargs, self._options)


class ActorHandle(Generic[C]):
    """A reference to a running actor of class ``C``; ``handle.method.remote(...)`` calls it.

    Handles are values: pass them to tasks and other actors and call them there. For a type
    checker, method calls go through ``__getattr__``: ``handle.m.remote(...)`` is not checked
    against ``C.m`` and gives ``Any`` (Python's type system cannot map a class's methods to
    remote twins without a plugin).
    """

    def __init__(self, actor_id: bytes, meta: dict[str, Any], actors: ActorClient | None, *, owned: bool = False) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._actors = actors
        self._owned = owned
        if actors is not None and owned:
            actors.handle_created(actor_id)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        info = self._meta["methods"].get(name)
        if info is None:
            raise AttributeError(
                f"actor class {self._meta['class_name']} has no method {name!r}; "
                f"it has: {', '.join(sorted(self._meta['methods'])) or 'none'}"
            )
        return ActorMethod(self, name, {"num_returns": info["num_returns"]})

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self) -> Any:
        if self._actors is not None:
            self._actors.handle_escaped(self._actor_id)
        return (_rebuild_handle, (self._actor_id, self._meta))

    def __del__(self) -> None:
        if self._owned and self._actors is not None:
            try:
                self._actors.handle_dropped(self._actor_id)
            except Exception:  # interpreter shutdown
                pass

    @property
    def actor_id(self) -> str:
        """The actor's id as hex."""
        return self._actor_id.hex()


class ActorMethod:
    """``handle.method``: call ``.remote(...)`` or ``.options(num_returns=...)``."""

    def __init__(self, handle: ActorHandle[Any], name: str, options: dict[str, Any]) -> None:
        self._handle = handle
        self._name = name
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Queue the call; returns an ObjectRef (a tuple when ``num_returns > 1``)."""
        h = self._handle
        core = require_core(f"{h._meta['class_name']}.{self._name}.remote()")
        num_returns = self._options.get("num_returns", 1)
        label = f"{h._meta['class_name']}.{self._name}"
        spec = core.tasks.make_spec(
            FunctionDescriptor(name=label, blob=b"", fn_id=b""), args, kwargs,
            num_returns=num_returns, resources={},
            max_retries=self._options.get("max_task_retries", h._meta.get("max_task_retries", 0)),
            retry_exceptions=False,
        )
        spec.method = self._name
        refs = core.actors.submit(h, spec)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return tuple(refs)

    def options(self, **options: Any) -> ActorMethod:
        """Per-call options: ``num_returns``, ``name``, ``max_task_retries``."""
        opts = dict(self._options)
        opts.update(validate(options, METHOD_OPTIONS, f"actor method {self._name}"))
        return ActorMethod(self._handle, self._name, opts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly; use .{self._name}.remote(...)")


def _rebuild_handle(actor_id: bytes, meta: dict[str, Any]) -> ActorHandle[Any]:
    core = context.get_core()
    return ActorHandle(actor_id, meta, core.actors if core is not None else None)


async def lookup_actor(core: Any, name: str, namespace: str | None) -> ActorHandle[Any]:
    """Find a named actor through the head (on the core's loop)."""
    from asyncray._wire import messages as m

    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs a non-empty actor name")
    ns: str = namespace or core.namespace
    entry: m.ActorEntry | None = await core.request_head(m.LookupActor(rid=0, name=name, namespace=ns))
    if entry is None:
        raise ValueError(f"no live actor named {name!r} in namespace {ns!r}")
    return ActorHandle(entry.actor_id, entry.meta, core.actors)


async def kill_actor(core: Any, handle: Any, no_restart: bool) -> None:
    """Kill through the head, then fail this process's queued calls at once."""
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(handle).__name__}")
    await core.actors.kill(handle._actor_id, no_restart)


__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "class_meta", "kill_actor", "lookup_actor"]
