"""``@remote`` on a class: ActorClass, ActorHandle and ActorMethod (what users touch)."""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from asyncray import _ids
from asyncray._client import context
from asyncray._client.options import ACTOR_OPTIONS, METHOD_OPTIONS, resources_of, validate
from asyncray._client.remote_function import require_core
from asyncray._client.task_spec import (
    CallCheck,
    FunctionDescriptor,
    call_check,
    constructor_check,
    encode_args,
    signature_tokens,
)

if TYPE_CHECKING:
    from asyncray._actor.client import ActorClient
    from asyncray._client.ref import ObjectRef

C = TypeVar("C")

DEFAULT_ASYNC_CONCURRENCY = 1000
FOREVER = 10**9  # max_task_retries=-1


def _method_signature(cls: type, name: str, member: Any) -> list[Any] | None:
    """``[qualname, has_receiver, tokens]`` for checking calls at the caller; None: not checked.

    Plain lists and strings: the metadata travels to the head and to every handle.
    """
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, staticmethod):
        fn, receiver = raw.__func__, False
    elif isinstance(raw, classmethod):
        fn, receiver = raw.__func__, True
    else:
        fn, receiver = member, True
    if not inspect.isfunction(fn):
        return None  # a callable attribute that is not a method (a nested class, ...): not checked
    tokens = signature_tokens(fn)
    return None if tokens is None else [fn.__qualname__, receiver, tokens]


def class_meta(cls: type) -> dict[str, Any]:
    """What a handle needs to know about the class: its name, and each method's options and parameters."""
    methods: dict[str, dict[str, Any]] = {}
    for name, member in inspect.getmembers(cls):
        if not callable(member) or (name.startswith("__") and name.endswith("__")):
            continue
        fn = inspect.unwrap(member) if not isinstance(member, staticmethod | classmethod) else member.__func__
        opts = getattr(fn, "__asyncray_method_options__", {})
        info: dict[str, Any] = {
            "num_returns": opts.get("num_returns", 1),
            "is_async": inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
            "sig": _method_signature(cls, name, member),
        }
        # Only when set, to keep the metadata small (it rides along with every handle).
        for key in ("max_task_retries", "concurrency_group"):
            if opts.get(key) is not None:
                info[key] = opts[key]
        if opts.get("retry_exceptions"):  # classes travel by name: the metadata crosses msgpack
            allowed = opts["retry_exceptions"]
            info["retry_exceptions"] = True if allowed is True else [f"{c.__module__}:{c.__qualname__}" for c in allowed]
        methods[name] = info
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
        self._check: CallCheck | None = None  # the constructor's, built at the first .remote()
        self._blob: FunctionDescriptor | None = None
        self._blob_core: Any = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __getattr__(self, name: str) -> Any:
        # Class attributes through the actor class, as in Ray (whose actor class subclasses the
        # user's): inside a method the global ``Counter`` is this object, and ``Counter.LIMIT``
        # must work. Dunders stay ours (pickling looks them up before __dict__ is filled).
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(cls, name)

    def __dir__(self) -> list[str]:
        # Autocomplete shows the class's own attributes beside remote/options, as Ray's does.
        return sorted(set(super().__dir__()) | {n for n in dir(self._cls) if not n.startswith("_")})

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        # ``class B(A)`` with A decorated: Python asks this object for real bases; refuse with
        # Ray's exception and say what works instead.
        from asyncray.exceptions import ActorClassInheritanceException

        raise ActorClassInheritanceException(
            f"Attempted to define a subclass of the actor class {self._cls.__name__}. Inheriting from actor classes"
            f" is not currently supported (Ray's words); inherit from the plain class instead and make the subclass an actor with"
            f" @asyncray.remote (the plain class is {self._cls.__name__}.__asyncray_class__ if the decorated name"
            " is all you have)."
        )

    @property
    def __asyncray_class__(self) -> type[C]:
        """The plain class this actor class was made from."""
        return self._cls

    def __getstate__(self) -> dict[str, Any]:
        # Travels inside functions that create actors; the per-process cache stays home.
        state = dict(self.__dict__)
        state["_blob"] = state["_blob_core"] = state["_check"] = None
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
        check = self._check
        if check is None:
            check = self._check = constructor_check(self._cls)
        check(args, kwargs)  # bad constructor arguments fail here, not in the actor's worker
        core = require_core(f"{self._cls.__name__}.remote()", auto_init=True)
        if self._blob is None or self._blob_core is not core:
            self._blob = FunctionDescriptor.of(self._cls, f"actor class {self._cls.__name__}")
            self._blob_core = core
        name = opts.get("name") or ""  # a str: validate() checked it
        namespace = opts.get("namespace") or getattr(core, "namespace", "default")
        arg_descs, kw_descs, deps, contained = encode_args(core.objects, f"{self._cls.__name__}.__init__", args, kwargs)
        meta = dict(self._meta)
        meta["max_task_retries"] = _retries(opts.get("max_task_retries"))
        default_conc = DEFAULT_ASYNC_CONCURRENCY if meta["is_async"] else 1
        spec = {
            "class_blob": self._blob.blob,
            "resources": resources_of(opts, 0.0),
            "max_restarts": opts.get("max_restarts") or 0,
            "max_concurrency": opts.get("max_concurrency") or default_conc,
            "concurrency_groups": dict(opts.get("concurrency_groups") or {}),
            "sync_methods_on_loop": bool(opts.get("sync_methods_on_loop")),
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


def _retries(n: int | None) -> int:
    """A retry count as the submitter counts it (-1: forever)."""
    return 0 if n is None else FOREVER if n == -1 else n


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

    def __init__(
        self, actor_id: bytes, meta: dict[str, Any], actors: ActorClient | None, *, lifetime: ObjectRef[Any] | None = None,
    ) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._actors = actors
        # A ref to the object whose life is the actor's (its owner ends it once no handle
        # anywhere holds one); None for named and detached actors, which live on their own.
        self._lifetime = lifetime
        self._checks: dict[str, CallCheck] = {}  # per method, built at its first call

    def __getattr__(self, name: str) -> ActorMethod:
        if name == "__ray_terminate__":  # Ray's graceful end, queued behind earlier calls (the actor's host runs it)
            return ActorMethod(self, name, {"num_returns": 1})
        if name.startswith("_"):
            raise AttributeError(name)
        info = self._meta["methods"].get(name)
        if info is None:
            raise AttributeError(
                f"actor class {self._meta['class_name']} has no method {name!r}; "
                f"it has: {', '.join(sorted(self._meta['methods'])) or 'none'}"
            )
        opts = {"num_returns": info["num_returns"]}
        if "max_task_retries" in info:
            opts["max_task_retries"] = _retries(info["max_task_retries"])
        if "retry_exceptions" in info:
            opts["retry_exceptions"] = info["retry_exceptions"]
        return ActorMethod(self, name, opts)

    def __dir__(self) -> list[str]:
        # What can be called on it, for autocomplete (as Ray lists it).
        return sorted({*self._meta["methods"], "__init__", "__ray_terminate__"})

    def _call_check(self, name: str) -> CallCheck:
        check = self._checks.get(name)
        if check is None:
            sig = self._meta["methods"].get(name, {}).get("sig")  # __ray_terminate__ has none
            ok = isinstance(sig, list | tuple) and len(sig) == 3 and isinstance(sig[0], str) and isinstance(sig[2], list | tuple)
            # Tokens are checked again before anything is built from them (they may come from the head).
            tokens = [t for t in sig[2] if isinstance(t, str)] if ok else None
            check = self._checks[name] = call_check(sig[0], tokens, bool(sig[1])) if ok else _unchecked
        return check

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self) -> Any:
        return (_rebuild_handle, (self._actor_id, self._meta, self._lifetime))

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
        h._call_check(self._name)(args, kwargs)  # as a local call would fail, before anything is queued
        core = require_core(f"{h._meta['class_name']}.{self._name}.remote()")
        num_returns = self._options.get("num_returns", 1)
        label = f"{h._meta['class_name']}.{self._name}"
        retries = self._options.get("max_task_retries")
        spec = core.tasks.make_spec(
            FunctionDescriptor(name=label, blob=b"", fn_id=b""), args, kwargs,
            num_returns=num_returns, resources={},
            max_retries=h._meta.get("max_task_retries", 0) if retries is None else retries,
            retry_exceptions=_exception_classes(self._options.get("retry_exceptions") or False),
        )
        spec.method = self._name
        spec.concurrency_group = self._options.get("concurrency_group") or ""
        refs = core.actors.submit(h, spec)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return tuple(refs)

    def options(self, **options: Any) -> ActorMethod:
        """Per-call options: ``num_returns``, ``name``, ``max_task_retries`` (and ``concurrency_group``,
        ``retry_exceptions``, checked and kept)."""
        opts = dict(self._options)
        opts.update(validate(options, METHOD_OPTIONS, f"actor method {self._name}"))
        if opts.get("max_task_retries") is not None:
            opts["max_task_retries"] = _retries(opts["max_task_retries"])
        return ActorMethod(self._handle, self._name, opts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly; use .{self._name}.remote(...)")


def _unchecked(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    pass


def _exception_classes(allowed: Any) -> Any:
    """``retry_exceptions`` as the submitter reads it: True, False or a tuple of classes (names
    from a class's metadata are imported here; one that cannot be found is left out)."""
    if isinstance(allowed, bool) or not allowed:
        return bool(allowed)
    classes = []
    for item in allowed:
        if isinstance(item, type):
            classes.append(item)
            continue
        module, _, qualname = str(item).partition(":")
        try:
            found: Any = importlib.import_module(module)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            continue
        if isinstance(found, type) and issubclass(found, BaseException):
            classes.append(found)
    return tuple(classes) or False


def _rebuild_handle(actor_id: bytes, meta: dict[str, Any], lifetime: ObjectRef[Any] | None = None) -> ActorHandle[Any]:
    core = context.get_core()
    return ActorHandle(actor_id, meta, core.actors if core is not None else None, lifetime=lifetime)


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
