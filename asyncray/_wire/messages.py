"""Typed control messages. Each kind is a slotted dataclass with an explicit wire form.

A message travels as one msgpack map: ``{"k": kind, <field>: <value>, ...}``. Values are
msgpack-native (bytes, str, int, float, bool, None, lists, str-keyed maps). User data never
appears here as Python objects: it is pickled first (see ``asyncray._store.serialization``).
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame or message; close the connection."""


_REGISTRY: dict[str, type[Message]] = {}
M = TypeVar("M", bound=type["Message"])


# A check of one decoded value: None when it fits, else what is wrong with it.
Check = Callable[[Any], "str | None"]


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_for(hint: Any) -> Check | None:
    """The check for a field's declared type (None: anything goes, as for ``Any``).

    Containers are checked one level deep, their items by their own declared types, so
    a list of ids really holds bytes; values typed ``Any`` (pickled user data, descriptors)
    are left to the layer that reads them.
    """
    if hint is Any or _converter_for(hint) is not None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        allows_none = type(None) in options
        rest = [o for o in options if o is not type(None)]
        inner = _check_for(rest[0]) if len(rest) == 1 else None
        if len(rest) != 1 and not allows_none:
            return None

        def check_optional(v: Any) -> str | None:
            if v is None:
                return None if allows_none else "null"
            return inner(v) if inner is not None else None

        return check_optional
    if hint is float:
        return lambda v: None if type(v) in (float, int) else _describe(v)
    if hint is int:
        return lambda v: None if type(v) is int else _describe(v)
    if hint in (bytes, str, bool):
        return lambda v: None if type(v) is hint else _describe(v)
    if origin is list:
        (item_hint,) = typing.get_args(hint) or (Any,)
        item = _check_for(item_hint)

        def check_list(v: Any) -> str | None:
            if type(v) is not list:
                return _describe(v)
            if item is not None:
                for x in v:
                    bad = item(x)
                    if bad is not None:
                        return f"list with a {bad} item"
            return None

        return check_list
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        key, value = _check_for(key_hint), _check_for(value_hint)

        def check_dict(v: Any) -> str | None:
            if type(v) is not dict:
                return _describe(v)
            for k, x in v.items():
                bad = (key(k) if key is not None else None) or (value(x) if value is not None else None)
                if bad is not None:
                    return f"map with a {bad} entry"
            return None

        return check_dict
    raise TypeError(f"no wire check for the type {hint!r}")


Convert = Callable[[Any], Any]


def _converter_for(hint: Any) -> Convert | None:
    """For a field holding payloads (``P``, ``list[P]``, ``P | None``): map(s) -> typed value(s)."""
    if isinstance(hint, type) and issubclass(hint, Payload):
        return hint.from_wire
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        enum_type = hint

        def convert_enum(v: Any) -> Any:
            try:
                return enum_type(v)
            except (ValueError, TypeError):
                raise ProtocolError(f"{v!r} is not a {enum_type.__name__}") from None

        return convert_enum
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list and args:
        inner = _converter_for(args[0])
        if inner is not None:
            convert_item = inner

            def convert_list(v: Any) -> Any:
                if type(v) is not list:
                    raise ProtocolError(f"expected a list, got a {_describe(v)}")
                return [convert_item(x) for x in v]

            return convert_list
    if origin in (types.UnionType, typing.Union) and type(None) in args and len(args) == 2:
        inner = _converter_for(next(a for a in args if a is not type(None)))
        if inner is not None:
            convert_some = inner
            return lambda v: None if v is None else convert_some(v)
    return None


def _to_wire_value(value: Any) -> Any:
    if isinstance(value, Payload):
        return value.to_wire()
    if type(value) is list and value and isinstance(value[0], Payload):
        return [v.to_wire() for v in value]
    return value


class Payload:
    """A typed value inside a message or a reply: a dataclass whose wire form is a checked map.

    Subclasses are declared with :func:`payload`. ``from_wire`` checks every field's type
    (and builds nested payloads) and raises ProtocolError for anything else.
    """

    __slots__ = ()
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    _CHECKS: ClassVar[tuple[tuple[str, Check], ...]] = ()
    _CONVERTS: ClassVar[tuple[tuple[str, Convert], ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map for this value."""
        return {name: _to_wire_value(getattr(self, name)) for name in self._FIELDS}

    @classmethod
    def from_wire(cls, value: Any) -> Any:
        """The typed value for a decoded map.

        Raises:
            ProtocolError: not a map, missing or unknown fields, or a field of the wrong type.
        """
        if type(value) is not dict:
            raise ProtocolError(f"{cls.__name__} must be a map, got a {_describe(value)}")
        return _build_checked(cls, dict(value), cls.__name__)


def _build_checked(cls: Any, values: dict[str, Any], what: str) -> Any:
    """``cls(**values)`` with payload fields built and every field's type checked (ProtocolError)."""
    try:
        for name, convert in cls._CONVERTS:
            if name in values:
                values[name] = convert(values[name])
        obj = cls(**values)
    except TypeError as exc:
        raise ProtocolError(f"bad fields for {what}: {exc}") from exc
    for name, check in cls._CHECKS:
        bad = check(getattr(obj, name))
        if bad is not None:
            raise ProtocolError(f"field {name!r} of {what} is a {bad}, not what the protocol says")
    return obj


PL = TypeVar("PL", bound=type[Payload])


def _field_rules(cls: type[Any]) -> tuple[tuple[str, ...], tuple[tuple[str, Check], ...], tuple[tuple[str, Convert], ...]]:
    names = tuple(f.name for f in fields(cls))
    hints = typing.get_type_hints(cls)
    checks, converts = [], []
    for name in names:
        convert = _converter_for(hints[name])
        if convert is not None:
            converts.append((name, convert))
            continue
        check = _check_for(hints[name])
        if check is not None:
            checks.append((name, check))
    return names, tuple(checks), tuple(converts)


def payload(cls: PL) -> PL:
    """Declare a dataclass as a payload (computes its field checks once)."""
    cls._FIELDS, cls._CHECKS, cls._CONVERTS = _field_rules(cls)
    return cls


class Message:
    """Base of all messages. Subclasses are registered with :func:`message`."""

    __slots__ = ()
    KIND: ClassVar[str] = ""
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    _CHECKS: ClassVar[tuple[tuple[str, Check], ...]] = ()
    _CONVERTS: ClassVar[tuple[tuple[str, Convert], ...]] = ()
    # A request's reply, typed: the Reply's value goes through this (ProtocolError when it
    # does not fit) before the requester sees it. None: any msgpack value.
    REPLY: ClassVar[Convert | None] = None

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map for this message."""
        d: dict[str, Any] = {"k": self.KIND}
        for name in self._FIELDS:
            d[name] = getattr(self, name)
        for name, _ in self._CONVERTS:
            d[name] = _to_wire_value(d[name])
        return d


def message(kind: str) -> Callable[[M], M]:
    """Register a dataclass as the message of the given kind."""

    def register(cls: M) -> M:
        if kind in _REGISTRY:
            raise ValueError(f"message kind {kind!r} registered twice")
        cls.KIND = kind
        cls._FIELDS, cls._CHECKS, cls._CONVERTS = _field_rules(cls)
        _REGISTRY[kind] = cls
        return cls

    return register


def from_wire(obj: Any) -> Message:
    """Build the typed message from a decoded msgpack map.

    Raises:
        ProtocolError: not a map, unknown kind, or missing/unknown fields.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is a {type(obj).__name__}, expected a map")
    kind = obj.pop("k", None)
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    msg: Message = _build_checked(cls, obj, repr(kind))
    return msg


def kinds() -> dict[str, type[Message]]:
    """All registered message kinds (for tests and docs)."""
    return dict(_REGISTRY)


# ---------------------------------------------------------------- generic reply
@message("reply")
@dataclass(slots=True)
class Reply(Message):
    """Answer to any request carrying ``rid``; ``error`` is a message, ``value`` the payload."""

    rid: int
    value: Any = None
    error: str | None = None


# ---------------------------------------------------------------- typed reply values
@payload
@dataclass(frozen=True, slots=True)
class NodeView(Payload):
    """One node as the head shows it: totals, what is free now, liveness, and facts about it."""

    node_id: bytes
    address: str
    resources: dict[str, float]
    available: dict[str, float]
    alive: bool
    info: dict[str, Any] = field(default_factory=dict)  # hostname, pid, transfer address, ...
    last_seen: float = 0.0
    death_cause: str = ""


@payload
@dataclass(frozen=True, slots=True)
class ClusterState(Payload):
    """The reply to GetClusterState: every node the head knows, alive or dead."""

    nodes: list[NodeView]


@payload
@dataclass(frozen=True, slots=True)
class LeaseGrant(Payload):
    """A worker leased to the requester (the reply to RequestLease when the node has room)."""

    lease_id: int
    worker_id: bytes
    address: str  # where the worker listens: tasks go there directly
    pid: int
    node_id: bytes
    gpu_ids: list[str] = field(default_factory=list)  # the GPUs the lease holds (the worker learns them from its node)


@payload
@dataclass(frozen=True, slots=True)
class LeaseRedirect(Payload):
    """The node is full (or can never fit the request): ask the node at ``redirect`` instead."""

    redirect: str


def lease_reply(value: Any) -> LeaseGrant | LeaseRedirect:
    """The typed reply to RequestLease."""
    if type(value) is dict and "redirect" in value:
        redirect: LeaseRedirect = LeaseRedirect.from_wire(value)
        return redirect
    grant: LeaseGrant = LeaseGrant.from_wire(value)
    return grant


@payload
@dataclass(frozen=True, slots=True)
class ActorEntry(Payload):
    """An actor as the head knows it (replies to WaitActor, LookupActor, ListActors)."""

    actor_id: bytes
    name: str
    namespace: str
    meta: dict[str, Any]
    state: str  # PENDING_CREATION, ALIVE, RESTARTING or DEAD
    incarnation: int
    address: str
    pid: int
    node_id: bytes
    num_restarts: int
    death_cause: str
    death_error: bytes | None
    detached: bool
    job_id: bytes = b""


@payload
@dataclass(frozen=True, slots=True)
class ActorRegistered(Payload):
    """The reply to CreateActorRequest: None, or the live actor that already has the name."""

    existing: ActorEntry | None = None


@payload
@dataclass(frozen=True, slots=True)
class ActorBuilt(Payload):
    """A worker's reply to CreateActor: ``ok``, or the constructor's pickled error."""

    ok: bool = False
    error: bytes | None = None


def _optional_actor(value: Any) -> ActorEntry | None:
    return None if value is None else ActorEntry.from_wire(value)


def _actor_list(value: Any) -> list[ActorEntry]:
    if type(value) is not list:
        raise ProtocolError(f"expected a list of actors, got a {_describe(value)}")
    return [ActorEntry.from_wire(v) for v in value]


def _checked(hint: Any) -> Convert:
    """A reply that is a plain value of the given type (checked, not converted)."""
    check = _check_for(hint)

    def convert(value: Any) -> Any:
        bad = check(value) if check is not None else None
        if bad is not None:
            raise ProtocolError(f"a reply is a {bad}, expected {hint}")
        return value

    return convert


class StateKind(enum.StrEnum):
    """What a GetState query asks for."""

    NODES = "nodes"
    WORKERS = "workers"
    TASKS = "tasks"
    TASKS_SUMMARY = "tasks_summary"
    ACTORS = "actors"
    ACTORS_SUMMARY = "actors_summary"
    OBJECTS = "objects"
    OBJECTS_SUMMARY = "objects_summary"
    TIMELINE = "timeline"
    LOGS = "logs"
    JOBS = "jobs"
    JOB = "job"
    JOB_LOGS = "job_logs"


@message("ping")
@dataclass(slots=True)
class Ping(Message):
    """Keepalive (``Connection.keep_alive``): ``answer`` asks the peer to ping back."""

    answer: bool = False


@message("hello")
@dataclass(slots=True)
class Hello(Message):
    """First frame on every connection: who is calling, proven by the cluster token."""

    role: str
    token: str = ""
    peer_id: bytes = b""
    address: str = ""  # where the caller itself listens (so replies can find it)


# ---------------------------------------------------------------- worker <-> node
@message("register_worker")
@dataclass(slots=True)
class RegisterWorker(Message):
    """A freshly started worker announces itself to its node."""

    worker_id: bytes
    pid: int
    address: str


@message("worker_blocked")
@dataclass(slots=True)
class WorkerBlocked(Message):
    """The worker's task waits in ``get``: its CPU can be lent out (SPEC section 3)."""

    worker_id: bytes


@message("worker_unblocked")
@dataclass(slots=True)
class WorkerUnblocked(Message):
    """The worker's task resumed after ``get``: take its CPU back."""

    worker_id: bytes


@message("log_lines")
@dataclass(slots=True)
class LogLines(Message):
    """Worker output: ``lines`` is a list of [prefix, stream, text]."""

    worker_id: bytes
    pid: int
    lines: list[Any]


@message("subscribe_logs")
@dataclass(slots=True)
class SubscribeLogs(Message):
    """A driver asks its node to forward worker output to it."""


# ---------------------------------------------------------------- client <-> node
@message("request_lease")
@dataclass(slots=True)
class RequestLease(Message):
    """Ask for a worker with these resources; answered by a Reply with a lease map."""

    rid: int
    resources: dict[str, float]
    dedicated: bool = False  # an actor keeps the worker for its lifetime
    label: str = ""


@message("cancel_lease_request")
@dataclass(slots=True)
class CancelLeaseRequest(Message):
    """The client no longer needs the lease it asked for with ``rid``."""

    rid: int


@message("return_lease")
@dataclass(slots=True)
class ReturnLease(Message):
    """Give a leased worker back; ``kill`` asks the node to end the process."""

    lease_id: int
    kill: bool = False


@message("reclaim_idle")
@dataclass(slots=True)
class ReclaimIdle(Message):
    """The node has queued requests: return leases that sit idle."""


@message("kill_worker")
@dataclass(slots=True)
class KillWorker(Message):
    """Ask the node to SIGKILL one of its workers (force-cancel, actor kill)."""

    worker_id: bytes


@message("node_info")
@dataclass(slots=True)
class GetNodeInfo(Message):
    """Ask a node for its state; answered by a Reply with a map."""

    rid: int
    # A worker watching its own lease: answered ``{"lease_id", "gpu_ids"}`` once the worker holds
    # a lease other than this one (sent before the lease's holder hears of the grant). -1: the state.
    lease_after: int = -1


# ---------------------------------------------------------------- node <-> head
@message("register_node")
@dataclass(slots=True)
class RegisterNode(Message):
    """A node joins the cluster."""

    rid: int
    node_id: bytes
    address: str
    resources: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    # Rejoining after the head restarted: the leases a head held here (actors it placed),
    # which the node kept when the head's connection dropped; the head kills the ones it
    # does not know.
    held: list[int] = field(default_factory=list)


@message("node_resources")
@dataclass(slots=True)
class NodeResources(Message):
    """A node's free resources changed (also serves as its heartbeat)."""

    node_id: bytes
    available: dict[str, float]


@message("cluster_state")
@dataclass(slots=True)
class GetClusterState(Message):
    """Ask the head for every node and its resources; answered by a Reply."""

    rid: int


# ---------------------------------------------------------------- actors (head)
@message("create_actor_request")
@dataclass(slots=True)
class CreateActorRequest(Message):
    """A creator asks the head to place and start an actor; the Reply says if the name was free.

    ``meta`` describes the class for handles (name, methods); ``spec`` holds what the
    head needs to (re)start it: class blob, encoded arguments, resources, restart policy.
    """

    rid: int
    actor_id: bytes
    name: str
    namespace: str
    get_if_exists: bool
    meta: dict[str, Any]
    spec: dict[str, Any]


@message("wait_actor")
@dataclass(slots=True)
class WaitActor(Message):
    """Answered once the actor is alive in an incarnation newer than ``after``, or dead."""

    rid: int
    actor_id: bytes
    after: int = -1


@message("kill_actor")
@dataclass(slots=True)
class KillActor(Message):
    """End an actor now; with ``no_restart`` it stays dead."""

    rid: int
    actor_id: bytes
    no_restart: bool = True
    reason: str = "it was killed by asyncray.kill()"


@message("lookup_actor")
@dataclass(slots=True)
class LookupActor(Message):
    """Find a named actor; the Reply value is its entry or None."""

    rid: int
    name: str
    namespace: str


@message("list_actors")
@dataclass(slots=True)
class ListActors(Message):
    """Every actor the head knows; answered by a Reply with a list of entries."""

    rid: int


@message("worker_exited")
@dataclass(slots=True)
class WorkerExited(Message):
    """A node tells the head how one of its workers ended (for actor death causes)."""

    worker_id: bytes
    exit_code: int


# ---------------------------------------------------------------- owner/submitter <-> worker
@message("push_task")
@dataclass(slots=True)
class PushTask(Message):
    """Run one task (or actor call) on the leased worker; answered by TaskDone.

    ``args``/``kwargs`` hold value descriptors (see serialization). ``fn_blob`` is sent
    the first time a function goes over a connection; after that only ``fn_id``.
    """

    task_id: bytes
    fn_id: bytes
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    return_ids: list[bytes]
    owner: str
    fn_blob: bytes | None = None
    actor_id: bytes | None = None
    method: str | None = None
    seq: int = 0
    caller: bytes = b""
    job_id: bytes = b""  # the job the task belongs to (its driver's, also for nested tasks)
    concurrency_group: str = ""  # an actor call's .options(concurrency_group=...); "": the method's own


@message("task_done")
@dataclass(slots=True)
class TaskDone(Message):
    """The outcome of a pushed task: one value descriptor per return id."""

    task_id: bytes
    results: list[Any]
    failed: bool = False
    duration: float = 0.0  # seconds the call ran on the worker (for pipelining decisions)
    contained: list[Any] | None = None  # per result: [object_id, owner] of refs inside it


@message("cancel_task")
@dataclass(slots=True)
class CancelTask(Message):
    """Interrupt a running task; ``force`` ends the worker process; ``recursive`` cancels the
    tasks it submitted too."""

    task_id: bytes
    force: bool = False
    recursive: bool = True


@message("cancel_object")
@dataclass(slots=True)
class CancelObject(Message):
    """To an object's owner: cancel the task that makes it (``asyncray.cancel`` of a borrowed ref)."""

    object_id: bytes
    force: bool = False
    recursive: bool = True


@message("get_object")
@dataclass(slots=True)
class GetObject(Message):
    """A borrower asks the owner for an object; the Reply value is a descriptor."""

    rid: int
    object_id: bytes


@message("create_actor")
@dataclass(slots=True)
class CreateActor(Message):
    """Build an actor instance on a dedicated worker; answered by a Reply."""

    rid: int
    actor_id: bytes
    class_blob: bytes
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    max_concurrency: int
    owner: str
    job_id: bytes = b""  # the job that created the actor: its methods report it
    concurrency_groups: dict[str, int] = field(default_factory=dict)  # @remote(concurrency_groups=...)
    sync_methods_on_loop: bool = False  # async actor: sync methods on the loop thread, as Ray runs them


# ---------------------------------------------------------------- cluster view and object transfer
@message("cluster_view")
@dataclass(slots=True)
class ClusterView(Message):
    """The head's periodic picture of the cluster, sent to every node (and on request)."""

    nodes: list[NodeView]


@message("fetch_object")
@dataclass(slots=True)
class FetchObject(Message):
    """A core asks its node to make a remote object local; the Reply comes when it is."""

    rid: int
    object_id: bytes
    node_id: bytes
    size: int = 0  # from the descriptor: lets the node make room (and use warm memory) first


@message("object_location")
@dataclass(slots=True)
class ObjectLocation(Message):
    """A node gained (``added``) or dropped a copy of a stored object (head's directory)."""

    object_id: bytes
    node_id: bytes
    size: int = 0
    added: bool = True


@message("objects_freed")
@dataclass(slots=True)
class ObjectsFreed(Message):
    """An owner freed these stored objects: the head removes them from its directory and
    tells every node that holds a copy (``DeleteObjects``)."""

    object_ids: list[bytes]


@message("locate_objects")
@dataclass(slots=True)
class LocateObjects(Message):
    """Which live nodes hold a copy of these objects (an owner replacing a copy that was lost)."""

    rid: int
    object_ids: list[bytes]


@message("owner_prefix")
@dataclass(slots=True)
class OwnerPrefix(Message):
    """A process tells the head the prefix of the ids it makes: when it goes, so do the objects it owned."""

    prefix: bytes


@message("worker_owns")
@dataclass(slots=True)
class WorkerOwns(Message):
    """A worker tells its node whether it owns live objects (such a worker is not reaped when idle)."""

    owns: bool


@message("owner_gone")
@dataclass(slots=True)
class OwnerGone(Message):
    """Head to every node: the process whose ids start with ``prefix`` is gone; delete its objects
    (also those it wrote but never got to announce)."""

    prefix: bytes


@message("delete_objects")
@dataclass(slots=True)
class DeleteObjects(Message):
    """Head to node: remove your copies of these freed objects."""

    object_ids: list[bytes]


# ---------------------------------------------------------------- observability
@message("task_events")
@dataclass(slots=True)
class TaskEvents(Message):
    """An owner's report to the head, about once a second (dashboard, state API, metrics).

    ``live``: [task_id, name, state, worker_pid, node_id, submitted_at, started_at] for
    tasks not finished yet (capped); ``counts``: {name: {state: n}} over all of them;
    ``finished``: [task_id, name, state, worker_pid, node_id, submitted_at, started_at,
    ended_at, error] since the last report; ``objects``: [count, bytes] this owner holds;
    ``actor``: when the process hosts an actor, ``{actor_id, mailbox, loop_lag_ms}`` (calls
    received and not finished; the worst recent event-loop lag of an async actor, else None).
    """

    owner: bytes
    pid: int
    role: str
    counts: dict[str, dict[str, int]]
    live: list[Any]
    finished: list[Any]
    objects: list[int]
    actor: dict[str, Any] | None = None
    stored: list[Any] | None = None  # owned objects in shared memory: [object_id, size, refs, borrowers]


@message("get_state")
@dataclass(slots=True)
class GetState(Message):
    """Ask the head for one kind of state: tasks, actors, objects, workers, nodes, summary."""

    rid: int
    kind: StateKind
    limit: int = 1000
    args: dict[str, Any] = field(default_factory=dict)  # kind-specific: filters, worker, job id

    def __post_init__(self) -> None:
        if not isinstance(self.kind, StateKind):  # a caller's string: refuse a typo here, not at the head
            try:
                self.kind = StateKind(self.kind)
            except ValueError:
                raise ValueError(
                    f"unknown state kind {self.kind!r}; one of {', '.join(k.value for k in StateKind)}"
                ) from None


@message("get_logs")
@dataclass(slots=True)
class GetLogs(Message):
    """Ask a node for worker log files: with ``worker`` (pid or id prefix) its lines matching
    ``q`` (the last ``limit``); without, the list of log files. Answered by a Reply."""

    rid: int
    worker: str = ""
    q: str = ""
    limit: int = 1000


@message("submit_job")
@dataclass(slots=True)
class SubmitJob(Message):
    """Run ``entrypoint`` (a shell command) as a job on the head's machine; the Reply is its id."""

    rid: int
    entrypoint: str
    working_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)


@message("stop_job")
@dataclass(slots=True)
class StopJob(Message):
    """Stop a running job (SIGTERM, then SIGKILL); the Reply says whether it was running."""

    rid: int
    job_id: str


@message("reserve_space")
@dataclass(slots=True)
class ReserveSpace(Message):
    """A writer asks its node for room for ``size`` bytes; the Reply says where to write."""

    rid: int
    size: int


@message("borrow")
@dataclass(slots=True)
class Borrow(Message):
    """A borrower tells an object's owner it now holds (``add``) or dropped refs to these objects.

    ``handoff`` lists ``[object_id, holder_address]``: the sender took over refs that the holder
    kept alive for it (refs inside a task's result); the owner, having counted the sender,
    passes ``released`` on to the holder, which may then let go. Going through the owner keeps
    the order: the owner always hears the new borrower before the old one drops.
    """

    add: list[bytes]
    drop: list[bytes]
    handoff: list[list[Any]] = field(default_factory=list)
    released: list[bytes] = field(default_factory=list)


# ---------------------------------------------------------------- failures
@message("node_dead")
@dataclass(slots=True)
class NodeDead(Message):
    """Head to every process: this node is dead (crashed, or silent past the node timeout).

    Owners stop waiting on it: tasks running there are retried elsewhere or fail with
    NodeDiedError, calls to actors there wait for their restart (SPEC 7).
    """

    node_id: bytes
    cause: str


@message("fenced")
@dataclass(slots=True)
class Fenced(Message):
    """Head to a node it declared dead: stop. Its workers are killed and the node exits, so
    no actor ever runs twice and no result of a retried task comes from it (SPEC 7)."""

    reason: str


# ---------------------------------------------------------------- what each request's reply is
def _nothing(value: Any) -> None:
    if value is not None:
        raise ProtocolError(f"a reply that should be empty is a {_describe(value)}")


RequestLease.REPLY = lease_reply
GetClusterState.REPLY = ClusterState.from_wire
RegisterNode.REPLY = _checked(dict[str, bool])
GetNodeInfo.REPLY = _checked(dict[str, Any])
CreateActorRequest.REPLY = ActorRegistered.from_wire
WaitActor.REPLY = ActorEntry.from_wire
KillActor.REPLY = _nothing
LookupActor.REPLY = _optional_actor
ListActors.REPLY = _actor_list
CreateActor.REPLY = ActorBuilt.from_wire
GetObject.REPLY = _checked(list[Any])  # a value descriptor (serialization.py)
FetchObject.REPLY = _checked(bool)
LocateObjects.REPLY = _checked(dict[bytes, list[bytes]])
ReserveSpace.REPLY = _checked(dict[str, Any])
# GetState, GetLogs, SubmitJob and StopJob answer with JSON-like state for people (dashboard,
# CLI): any msgpack value.
