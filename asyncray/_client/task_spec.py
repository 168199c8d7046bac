"""What a submitted task is: the function, encoded arguments, dependencies, options."""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncray._client.ref import ObjectRef
from asyncray._store import serialization as ser
from asyncray._wire.codec import MAX_FRAME_BYTES
from asyncray.exceptions import SerializationError

if TYPE_CHECKING:
    from asyncray._client.objects import ObjectTable


# A function or class travels in a control frame: it must leave room in one for the rest.
MAX_FUNCTION_BYTES = MAX_FRAME_BYTES - 1024 * 1024


# ---------------------------------------------------------------- argument binding at .remote()
# A call that would not bind to the function's parameters fails at ``.remote()`` with the very
# TypeError a local call gives. The check calls a do-nothing stub with the same parameter list:
# CPython's own binding is exact (its messages are what users know) and ~10x cheaper than
# ``inspect.Signature.bind``, which matters on the submit path.

CallCheck = Callable[[tuple[Any, ...], dict[str, Any]], None]
# One parameter as a token: "x", "x=" (has a default), "*args", "**kw", or the markers "/" and "*".
_TOKEN = re.compile(r"(\*{0,2})(\w+)(=?)\Z")
_P = inspect.Parameter


def signature_tokens(fn: Any) -> list[str] | None:
    """``fn``'s parameter list as tokens (msgpack-friendly, to travel in actor metadata); None
    when it has no signature to read (some builtins)."""
    try:
        # Not follow_wrapped: a decorator's wrapper is what a local call binds to first.
        sig = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    tokens: list[str] = []
    starred = False
    for i, p in enumerate(params):
        if p.kind is _P.KEYWORD_ONLY and not starred:
            tokens.append("*")
        starred = starred or p.kind in (_P.KEYWORD_ONLY, _P.VAR_POSITIONAL)
        prefix = "*" if p.kind is _P.VAR_POSITIONAL else "**" if p.kind is _P.VAR_KEYWORD else ""
        tokens.append(prefix + p.name + ("=" if p.default is not _P.empty else ""))
        if p.kind is _P.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not _P.POSITIONAL_ONLY):
            tokens.append("/")
    return tokens


@functools.lru_cache(maxsize=4096)
def _stub(qualname: str, tokens: tuple[str, ...]) -> Callable[..., None] | None:
    """A function with this parameter list and an empty body, named for error messages.

    Tokens may come off the wire (actor metadata from the head): each must be a plain
    identifier with its markers, so nothing but a parameter list is ever compiled.
    """
    parts: list[str] = []
    names: list[str] = []
    for t in tokens:
        if t in ("/", "*"):
            parts.append(t)
            continue
        m = _TOKEN.match(t)
        if m is None or not m[2].isidentifier() or keyword.iskeyword(m[2]):
            return None
        names.append(m[2])
        parts.append(f"{m[1]}{m[2]}{'=None' if m[3] else ''}")
    namespace: dict[str, Any] = {}
    try:
        exec(f"def stub({', '.join(parts)}):\n    pass\n", {"__builtins__": {}}, namespace)  # noqa: S102  # validated identifiers only
    except SyntaxError:
        return None
    stub: Callable[..., None] = namespace["stub"]
    if list(inspect.signature(stub).parameters) != names:  # the compiler normalized a name (NFKC)
        return None
    stub.__name__ = qualname.rpartition(".")[2]
    stub.__qualname__ = qualname  # CPython's binding errors name the function by its __qualname__
    return stub


def _no_check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    pass


def call_check(qualname: str, tokens: list[str] | None, receiver: bool = False) -> CallCheck:
    """A check that raises the TypeError a local call would, for arguments that do not bind.

    ``receiver``: the tokens start with ``self`` (or ``cls``), which the caller never passes.
    """
    stub = _stub(qualname, tuple(tokens)) if tokens is not None else None
    if stub is None:
        return _no_check
    bind = functools.partial(stub, None) if receiver else stub

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(str(exc)) from None  # raised afresh: the stub's frame means nothing to users

    return check


def check_for(fn: Any, receiver: bool = False) -> CallCheck:
    """``call_check`` for a local function (or method, with ``receiver``)."""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return call_check(str(qualname), signature_tokens(fn), receiver)


def constructor_check(cls: type) -> CallCheck:
    """The check for ``cls(*args, **kwargs)``: what ``__init__`` (or ``__new__``) takes."""
    klass: Any = cls  # mypy will not compare or read __init__ through a type
    if klass.__init__ is object.__init__:
        if klass.__new__ is object.__new__:
            def takes_nothing(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                if args or kwargs:
                    raise TypeError(f"{cls.__name__}() takes no arguments")

            return takes_nothing
        return check_for(klass.__new__, receiver=True)
    return check_for(klass.__init__, receiver=True)


class TaskState(enum.Enum):
    """Where a task is in its owner's hands."""

    SUBMITTED = "submitted"
    WAITING_FOR_DEPS = "waiting_for_deps"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class FunctionDescriptor:
    """A function (or class) pickled once; workers cache it by content hash."""

    name: str
    blob: bytes
    fn_id: bytes
    avg_s: float = -1.0  # running average of how long a call takes on a worker; -1: unknown
    samples: int = 0  # how many calls the average has seen
    is_async: bool = False  # an ``async def`` function: many can share one worker's loop

    @classmethod
    def of(cls, obj: Any, name: str) -> FunctionDescriptor:
        """Pickle ``obj`` by value or reference (cloudpickle decides) and hash the bytes."""
        try:
            blob = ser.dumps_function(obj)
        except Exception as exc:
            raise SerializationError(f"{name} cannot be pickled for remote execution: {exc}") from exc
        if len(blob) > MAX_FUNCTION_BYTES:
            what = (
                f"The actor {obj.__name__}" if isinstance(obj, type)
                else f"The remote function {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)}"
            )
            raise ValueError(
                f"{what} is too large: {name} pickles to {len(blob):,} bytes, over the {MAX_FUNCTION_BYTES:,}-byte limit for shipping"
                " a function or class to workers; it probably captures large data in a closure or a global:"
                " pass that data as an argument, or put() it and pass the ref"
            )
        return cls(
            name=name, blob=blob, fn_id=hashlib.blake2b(blob, digest_size=16).digest(),
            is_async=inspect.iscoroutinefunction(obj),
        )


@dataclass(slots=True, eq=False)
class TaskSpec:
    """One task (or actor call) from submission to its result."""

    task_id: bytes
    fn: FunctionDescriptor
    args: list[Any]
    kwargs: dict[str, Any]
    deps: list[ObjectRef[Any]]
    return_ids: list[bytes]
    resources: dict[str, float]
    max_retries: int = 3
    retry_exceptions: Any = False
    max_calls: int = 0  # a worker runs at most this many calls of the function, then is replaced (0: no limit)
    attempt: int = 0
    cancelled: bool = False
    state: TaskState = TaskState.SUBMITTED
    pending_deps: int = 0
    worker_pid: int = 0
    actor: Any = None
    method: str | None = None
    concurrency_group: str = ""  # an actor call's .options(concurrency_group=...)
    seq: int = 0
    strategy: Any = None  # None, "SPREAD" or a NodeAffinitySchedulingStrategy
    node_id: bytes = b""  # where it ran (set when pushed)
    submitted_at: float = 0.0  # wall clock, for the dashboard and the timeline
    started_at: float = 0.0
    duration: float = 0.0
    contained: list[Any] = field(default_factory=list)  # refs inside the arguments, alive until done
    job_id: bytes = b""  # the submitting job: the driver's, or the job of the task that submitted it
    # Lineage: the arguments as encoded at .remote() (refs still refs), and the refs they hold,
    # kept while a stored result of this task lives, so that a lost result can be rebuilt by
    # running the task again (``TaskSubmitter.rebuild_lost``).
    encoded_args: list[Any] = field(default_factory=list)
    encoded_kwargs: dict[str, Any] = field(default_factory=dict)
    lineage_deps: list[ObjectRef[Any]] | None = None
    lineage_contained: list[ObjectRef[Any]] | None = None
    rebuilding: str = ""  # set while the task runs again to rebuild lost results: why they were lost
    sched_key: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.sched_key = (*sorted(self.resources.items()), self.strategy)


def _encode_one(objects: ObjectTable, value: Any, what: str, deps: list[ObjectRef[Any]]) -> list[Any]:
    if type(value) is ObjectRef:
        deps.append(value)
        return [ser.REF, value.id]
    try:
        data, bufs = ser.dumps(value)
    except Exception as exc:
        raise SerializationError(f"{what} ({type(value).__name__}) cannot be pickled: {exc}") from exc
    size = len(data) + sum(b.raw().nbytes for b in bufs) if bufs else len(data)
    if size <= ser.INLINE_MAX_BYTES:
        return [ser.INLINE, data, [b.raw().tobytes() for b in bufs]]
    # Large arguments go through the object store, never through a control frame (SPEC 2).
    ref = objects.put_serialized(value, (data, bufs))
    deps.append(ref)
    return [ser.REF, ref.id]


def encode_args(
    objects: ObjectTable, name: str, args: Any, kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any], list[ObjectRef[Any]], list[ObjectRef[Any]]]:
    """Encode call arguments: descriptors, dependencies (top-level refs, resolved before the
    call) and contained refs (nested in arguments: passed as refs, kept alive by the caller
    until the task is done, by which time a worker that kept them is a registered borrower).
    """
    deps: list[ObjectRef[Any]] = []
    contained: list[ObjectRef[Any]] = []
    with ser.collecting_refs(contained):
        arg_descs = [_encode_one(objects, a, f"argument {i} of {name}()", deps) for i, a in enumerate(args)]
        kw_descs = {k: _encode_one(objects, v, f"argument {k!r} of {name}()", deps) for k, v in kwargs.items()}
    return arg_descs, kw_descs, deps, contained
