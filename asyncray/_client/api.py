"""Pieces shared by the sync facade and ``aio``: argument checks and cluster queries."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from asyncray._client import context
from asyncray._client.ref import ObjectRef
from asyncray._wire import messages as m

if TYPE_CHECKING:
    from asyncray._client.core import Core

INIT_DEFAULTS: dict[str, Any] = {
    "num_cpus": None, "num_gpus": None, "resources": None, "object_store_memory": None,
    "namespace": None, "include_dashboard": None, "dashboard_host": "127.0.0.1",
    "dashboard_port": 8265, "ignore_reinit_error": False, "log_to_driver": True, "token": None,
    "object_store_dir": None, "object_spilling_dir": None,
}


def normalize_init(address: str | None, kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Check init() keywords; map seed-era spellings (with a DeprecationWarning)."""
    opts = dict(kwargs)
    if "num_workers" in opts:
        warnings.warn("init(num_workers=N) is the Ray 0.x spelling; use init(num_cpus=N)", DeprecationWarning, stacklevel=3)
        n = opts.pop("num_workers")
        opts.setdefault("num_cpus", n)
    unknown = set(opts) - set(INIT_DEFAULTS)
    if unknown:
        raise TypeError(f"init() got unknown keyword(s) {sorted(unknown)}; valid: {sorted(INIT_DEFAULTS)}")
    for name in ("num_cpus", "num_gpus", "object_store_memory"):
        v = opts.get(name)
        if v is not None and (not isinstance(v, int | float) or v < 0):
            raise ValueError(f"init({name}=...) must be a number >= 0, got {v!r}")
    for name in ("object_store_dir", "object_spilling_dir"):
        check_directory(f"init({name}=...)", opts.get(name))
    address = address or os.environ.get("ASYNCRAY_ADDRESS") or None
    merged = dict(INIT_DEFAULTS)
    merged.update(opts)
    return address, merged


def check_directory(what: str, path: Any) -> None:
    """An existing directory this process may write in (or None: the default)."""
    if path is None:
        return
    if not isinstance(path, str | os.PathLike) or not os.path.isdir(path):
        raise ValueError(f"{what} must be an existing directory, got {path!r}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: {os.fspath(path)!r} is not writable by this user")


def check_refs(refs: Any, api: str) -> tuple[list[ObjectRef[Any]], bool]:
    """Accept one ref or a list/tuple of refs; return (list, was_single)."""
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, list | tuple):
        for i, r in enumerate(refs):
            if not isinstance(r, ObjectRef):
                raise TypeError(f"{api}() expects ObjectRefs; item {i} is a {type(r).__name__}")
        return list(refs), False
    raise TypeError(f"{api}() expects an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")


def check_wait(refs: Any, num_returns: int, timeout: float | None) -> list[ObjectRef[Any]]:
    """Validate wait() arguments as Ray does."""
    if isinstance(refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, not a single ObjectRef")
    lst, _ = check_refs(refs, "wait")
    if len(set(lst)) != len(lst):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError(f"wait(num_returns=...) must be an int >= 0, got {num_returns!r}")
    if num_returns > len(lst):
        raise ValueError(f"wait(num_returns={num_returns}) is more than the {len(lst)} refs given")
    if timeout is not None and timeout < 0:
        raise ValueError(f"wait(timeout=...) must be >= 0, got {timeout!r}")
    return lst


def wait_object_refs_kw(refs: Any, kwargs: dict[str, Any]) -> Any:
    """Ray 1.x spelled the first argument ``object_refs=``; still accepted with a warning."""
    if "object_refs" in kwargs:
        warnings.warn("wait(object_refs=...) is the Ray 1.x spelling; pass the list positionally", DeprecationWarning, stacklevel=3)
        if refs is not None:
            raise TypeError("wait() got refs both positionally and as object_refs=")
        refs = kwargs.pop("object_refs")
    if kwargs:
        raise TypeError(f"wait() got unexpected keyword(s) {sorted(kwargs)}")
    if refs is None:
        raise TypeError("wait() missing the list of ObjectRefs")
    return refs


def request_cancel(core: Core, ref: Any, force: bool, recursive: bool) -> None:
    """Check ``cancel()``'s arguments as Ray does, then cancel on the core's loop (it returns at once).

    Raises:
        TypeError: ``ref`` is not an ObjectRef.
        ValueError: ``force=True`` for an actor call (it would kill the actor; use ``kill``).
    """
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(ref).__name__}")
    if force and core.tasks.is_actor_call(ref):
        raise ValueError(
            "cancel(force=True) is not supported for actor tasks (as in Ray): it would kill the actor;"
            " use asyncray.kill(actor) to end the actor, or cancel(ref) to cancel the call"
        )
    core.call_soon(core.tasks.cancel, ref, bool(force), bool(recursive))


async def cluster_state(core: Core) -> list[m.NodeView]:
    """Every node the head knows, with totals and free resources."""
    state: m.ClusterState = await core.request_head(m.GetClusterState(rid=0))
    return state.nodes


def nodes_view(nodes: list[m.NodeView]) -> list[dict[str, Any]]:
    """Ray-shaped ``nodes()`` entries."""
    return [
        {
            "NodeID": n.node_id.hex(),
            "Alive": n.alive,
            "NodeManagerAddress": n.info.get("hostname", ""),
            "Address": n.address,
            "Resources": dict(n.resources),
            "Available": dict(n.available),
        }
        for n in nodes
    ]


def sum_resources(nodes: list[m.NodeView], field: str) -> dict[str, float]:
    """Add a resource map (``resources`` or ``available``) over the live nodes."""
    out: dict[str, float] = {}
    for n in nodes:
        if n.alive:
            amounts: dict[str, float] = n.resources if field == "resources" else n.available
            for k, v in amounts.items():
                out[k] = out.get(k, 0.0) + v
    if field == "available":  # as in Ray: a resource all in use is absent, not 0
        out = {k: v for k, v in out.items() if v > 1e-9}
    return out


def gpu_ids(core: Core) -> list[Any]:
    """The GPU ids of this worker's lease (``get_gpu_ids``); the driver holds none."""
    executor = core.executor
    return executor.gpus.visible() if executor is not None else []


class RuntimeContext:
    """Who is calling: ids of the job, node, worker, task and actor (hex strings)."""

    def __init__(self, core: Core) -> None:
        task = context.current_task.get()
        self.job_id: str = core.current_job_id().hex()
        self.node_id: str = core.node_id.hex()
        self.worker_id: str = core.worker_id.hex()
        self.task_id: str | None = task.task_id.hex() if task else None
        self.actor_id: str | None = task.actor_id.hex() if task and task.actor_id else None
        self.namespace: str = core.namespace
        self._gpu_ids: list[str] = [str(g) for g in gpu_ids(core)]

    def get_job_id(self) -> str:
        """The job id."""
        return self.job_id

    def get_node_id(self) -> str:
        """The node this code runs on."""
        return self.node_id

    def get_worker_id(self) -> str:
        """The worker (or driver) process."""
        return self.worker_id

    def get_task_id(self) -> str | None:
        """The running task, or None in the driver."""
        return self.task_id

    def get_actor_id(self) -> str | None:
        """The actor whose method runs, or None."""
        return self.actor_id

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators this worker may use, by resource name, ids as str (as Ray): ``{"GPU": [...]}``."""
        return {"GPU": list(self._gpu_ids)}

    def __repr__(self) -> str:
        return f"RuntimeContext(node_id={self.node_id[:8]}, task_id={self.task_id}, actor_id={self.actor_id})"


def already_running(opts: dict[str, Any]) -> Any:
    """The running runtime's info when ``ignore_reinit_error`` allows it; raise otherwise; None if not running."""
    from asyncray._client import runtime

    rt = runtime.current()
    if rt is None:
        return None
    if opts["ignore_reinit_error"]:
        return rt.info
    raise RuntimeError(
        "asyncray.init() was already called; call asyncray.shutdown() first, or pass ignore_reinit_error=True"
    )
