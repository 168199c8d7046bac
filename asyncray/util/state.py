"""The cluster's state from Python, as in ``ray.util.state`` (issue "Seeing the cluster").

Each function asks the head of the cluster this process is connected to (``init()``
first) and returns plain lists and dicts with ids as hex strings, the same rows that
``asyncray list ...`` prints and the dashboard's ``/api/`` serves::

    asyncray.init()
    ...
    from asyncray.util.state import list_tasks, summarize_tasks
    failed = list_tasks(filters={"state": "FAILED"})
"""

from __future__ import annotations

import asyncio
from typing import Any

from asyncray._client import context
from asyncray._wire import messages as m

__all__ = [
    "get_log", "list_actors", "list_jobs", "list_nodes", "list_objects", "list_tasks", "list_workers",
    "summarize_actors", "summarize_objects", "summarize_tasks",
]

DEFAULT_LIMIT = 1000
TIMEOUT_S = 30.0


def _state(kind: str, limit: int = DEFAULT_LIMIT, **args: Any) -> Any:
    core = context.get_core()
    if core is None:
        raise RuntimeError("asyncray.util.state needs a running runtime: call asyncray.init() first")

    async def ask() -> Any:
        request = core.request_head(m.GetState(rid=0, kind=m.StateKind(kind), limit=limit, args=args))
        return await asyncio.wait_for(request, TIMEOUT_S)

    if core.on_loop_thread():
        raise RuntimeError(
            "asyncray.util.state functions block; they cannot run on asyncray's own event loop thread"
        )
    return core.run_coroutine(ask()).result(TIMEOUT_S + 1)


def _filters(filters: dict[str, Any] | list[tuple[str, str, Any]] | None) -> dict[str, Any]:
    """Accept ``{"state": "FAILED"}`` or Ray's ``[("state", "=", "FAILED")]``."""
    if not filters:
        return {}
    if isinstance(filters, dict):
        return dict(filters)
    out = {}
    for key, op, value in filters:
        if op not in ("=", "=="):
            raise ValueError(f"only '=' filters are supported, got {op!r}")
        out[key] = value
    return out


def list_nodes(filters: dict[str, Any] | None = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Every node: address, liveness, resources, free resources, object store use, host CPU and memory."""
    return list(_state("nodes", limit, filters=_filters(filters)))


def list_workers(filters: dict[str, Any] | None = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Every worker process of the live nodes: pid, state, what it runs now, CPU percent, RSS."""
    return list(_state("workers", limit, filters=_filters(filters)))


def list_tasks(filters: dict[str, Any] | list[tuple[str, str, Any]] | None = None,
               limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Tasks not finished yet, then the most recent finished ones (with their errors).

    Args:
        filters: keep rows whose fields equal these values, e.g. ``{"state": "FAILED", "name": "f"}``.
        limit: at most this many rows.

    Note: owners report to the head about once a second, so a task shows up here up to a
    second after it changes state.
    """
    return list(_state("tasks", limit, filters=_filters(filters)))


def list_actors(filters: dict[str, Any] | None = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Every actor: class, name, state, node, pid, restarts, death cause."""
    return list(_state("actors", limit, filters=_filters(filters)))


def list_objects(filters: dict[str, Any] | None = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Objects held in the nodes' shared-memory stores: size and the nodes holding a copy."""
    return list(_state("objects", limit, filters=_filters(filters)))


def list_jobs(limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Jobs submitted with ``asyncray submit``, newest first."""
    return list(_state("jobs", limit))


def summarize_tasks() -> dict[str, Any]:
    """``{"counts": {state: n}, "by_name": {function: {state: n}}}``."""
    return dict(_state("tasks_summary"))


def summarize_actors() -> dict[str, Any]:
    """``{"counts": {state: n}, "by_class": {class: {state: n}}}``."""
    return dict(_state("actors_summary"))


def summarize_objects() -> dict[str, Any]:
    """Objects and bytes in shared memory, per node, and how many objects each owner holds."""
    return dict(_state("objects_summary"))


def get_log(worker: str | int, q: str = "", limit: int = DEFAULT_LIMIT) -> list[str]:
    """The last ``limit`` lines of a worker's log (by pid, worker id or actor id) containing ``q``.

    Raises:
        ValueError: no log for that worker.
    """
    res = _state("logs", limit, worker=str(worker), q=q)
    if not res.get("found"):
        raise ValueError(f"no log for worker {worker!r}")
    return list(res["lines"])
