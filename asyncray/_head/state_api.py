"""The cluster's state as plain data: one function behind the dashboard's JSON API, the
``GetState`` message, the ``asyncray list|summary|logs|timeline|job`` commands and
``asyncray.util.state`` (issue "Seeing the cluster").

Everything is computed when asked from what the head already keeps (node reports, the
actor directory, the object directory, owners' task reports); only per-worker CPU,
memory and log files are fetched from the nodes, on request. Ids come back as hex
strings so that the result is JSON- and msgpack-ready as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asyncray import _ids
from asyncray._wire import messages as m

if TYPE_CHECKING:
    from asyncray._head.service import HeadService

log = logging.getLogger(__name__)

# A node that does not answer an info or logs request within this long is shown without it.
NODE_QUERY_TIMEOUT_S = 5.0
KINDS = tuple(k.value for k in m.StateKind)


def jsonable(value: Any) -> Any:
    """Bytes become hex strings, tuples lists, recursively."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def apply_filters(rows: list[dict[str, Any]], filters: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Keep rows whose ``key`` equals each filter value (as text, case-insensitive)."""
    if not filters:
        return rows
    want = {k: str(v).lower() for k, v in filters.items() if v not in (None, "")}
    return [r for r in rows if all(str(r.get(k, "")).lower() == v for k, v in want.items())]


async def answer(head: HeadService, msg: m.GetState | m.SubmitJob | m.StopJob) -> Any:
    """Carry out one state query or job request (the head's ``GetState`` hook)."""
    if isinstance(msg, m.SubmitJob):
        return await head.jobs.submit(msg.entrypoint, msg.working_dir, msg.env)
    if isinstance(msg, m.StopJob):
        return await head.jobs.stop_job(msg.job_id)
    return await collect_state(head, msg.kind, msg.limit, msg.args)


async def collect_state(head: HeadService, kind: str, limit: int, args: dict[str, Any] | None = None) -> Any:
    """One kind of cluster state.

    Args:
        head: the head service.
        kind: a :class:`StateKind` (or its string).
        limit: at most this many rows (lists).
        args: kind-specific: ``filters`` (key -> value) for lists, ``worker``/``q`` for logs,
            ``job_id``/``offset`` for jobs.

    Raises:
        ValueError: unknown kind.
        KeyError: an unknown job id.
    """
    try:
        which = m.StateKind(kind)
    except ValueError:
        raise ValueError(f"unknown state kind {kind!r}; one of {', '.join(KINDS)}") from None
    return await _QUERIES[which](head, limit, args or {})


Query = Callable[["HeadService", int, dict[str, Any]], Awaitable[Any]]


async def _nodes(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return apply_filters(await nodes(head), args.get("filters"))[:limit]


async def _workers(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return apply_filters(await workers(head), args.get("filters"))[:limit]


async def _tasks(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    filters = args.get("filters")
    return apply_filters(tasks(head, max(limit, 0) if not filters else 1_000_000), filters)[:limit]


async def _tasks_summary(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return {"counts": head.tasks.counts(), "by_name": head.tasks.summary()}


async def _actors(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return apply_filters(actors(head), args.get("filters"))[:limit]


async def _actors_summary(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    rows = actors(head)
    by_class: dict[str, dict[str, int]] = {}
    for a in rows:
        per = by_class.setdefault(a["class_name"], {})
        per[a["state"]] = per.get(a["state"], 0) + 1
    return {"counts": dict(Counter(a["state"] for a in rows)), "by_class": by_class}


async def _objects(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return apply_filters(objects(head), args.get("filters"))[:limit]


async def _objects_summary(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return objects_summary(head)


async def _timeline(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return timeline(head, limit)


async def _logs(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return await logs(head, str(args.get("worker", "")), str(args.get("q", "")), limit)


async def _jobs(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return apply_filters(head.jobs.list(), args.get("filters"))[:limit]


async def _job(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return head.jobs.get(str(args["job_id"]))


async def _job_logs(head: HeadService, limit: int, args: dict[str, Any]) -> Any:
    return head.jobs.read_log(str(args["job_id"]), int(args.get("offset", 0)))


_QUERIES: dict[m.StateKind, Query] = {
    m.StateKind.NODES: _nodes,
    m.StateKind.WORKERS: _workers,
    m.StateKind.TASKS: _tasks,
    m.StateKind.TASKS_SUMMARY: _tasks_summary,
    m.StateKind.ACTORS: _actors,
    m.StateKind.ACTORS_SUMMARY: _actors_summary,
    m.StateKind.OBJECTS: _objects,
    m.StateKind.OBJECTS_SUMMARY: _objects_summary,
    m.StateKind.TIMELINE: _timeline,
    m.StateKind.LOGS: _logs,
    m.StateKind.JOBS: _jobs,
    m.StateKind.JOB: _job,
    m.StateKind.JOB_LOGS: _job_logs,
}


# ---------------------------------------------------------------- nodes and workers
async def node_infos(head: HeadService) -> dict[bytes, dict[str, Any]]:
    """Each live node's own report (workers with CPU and memory, host usage); slow nodes left out."""

    async def one(node_id: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            conn = await head.node_client(node_id)
            return node_id, await asyncio.wait_for(conn.request(m.GetNodeInfo(rid=0)), NODE_QUERY_TIMEOUT_S)
        except Exception as exc:  # a node going away must not break the page
            log.debug("node %s did not answer: %s", node_id.hex()[:8], exc)
            return node_id, None

    alive = [nid for nid, n in head.nodes.items() if n["alive"]]
    results = await asyncio.gather(*(one(nid) for nid in alive))
    return {nid: info for nid, info in results if info is not None}


def store_used(head: HeadService) -> dict[bytes, int]:
    """Bytes of shared-memory objects held per node (from the head's object directory)."""
    used: dict[bytes, int] = {}
    for holders in head.objects.values():
        for node_id, size in holders.items():
            used[node_id] = used.get(node_id, 0) + size
    return used


async def nodes(head: HeadService, infos: dict[bytes, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every node with totals, free resources, object store use and (if alive) host usage."""
    infos = await node_infos(head) if infos is None else infos
    used = store_used(head)
    out = []
    for nid, n in head.nodes.items():
        info = infos.get(nid) or {}
        store = info.get("store") or {}
        out.append({
            "node_id": nid.hex(), "address": n["address"], "alive": n["alive"],
            "state": "ALIVE" if n["alive"] else "DEAD", "death_cause": n.get("death_cause", ""),
            "hostname": n["info"].get("hostname", ""), "pid": n["info"].get("pid", 0),
            "resources": n["resources"], "available": n["available"],
            "object_store_used": store.get("used_bytes", used.get(nid, 0)),
            "object_store_spilled": store.get("spilled_bytes", 0),
            "object_store_objects": store.get("objects", 0),
            "object_store_total": n["resources"].get("object_store_memory", 0),
            "host": info.get("host", {}), "num_workers": len(info.get("workers", [])),
        })
    return out


async def workers(head: HeadService, infos: dict[bytes, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every worker of every live node: pid, state, what it runs now, CPU and memory."""
    infos = await node_infos(head) if infos is None else infos
    running = head.tasks.running_by_pid()
    actor_on = {a["pid"]: a for a in actors(head) if a["state"] != "DEAD" and a["pid"]}
    out = []
    for nid, info in infos.items():
        for w in info.get("workers", []):
            pid = w["pid"]
            actor = actor_on.get(pid)
            current = running.get(pid, "")
            if actor is not None and not current:
                current = f"actor {actor['class_name']}"
            out.append({
                "node_id": nid.hex(), "worker_id": _ids.short(w["worker_id"]), "pid": pid,
                "state": w["state"], "current": current,
                "actor_id": actor["actor_id"] if actor else "",
                "cpu_percent": w.get("cpu_percent", 0.0), "rss": w.get("rss", 0),
            })
    return out


# ---------------------------------------------------------------- tasks, actors, objects
def tasks(head: HeadService, limit: int) -> list[dict[str, Any]]:
    """Live tasks first, then the latest finished ones, with errors."""
    out = []
    for t in head.tasks.tasks(limit):
        row = jsonable(t)
        row.setdefault("ended_at", None)
        row.setdefault("error", None)
        out.append(row)
    return out


def actors(head: HeadService) -> list[dict[str, Any]]:
    """Every actor with its class, state, place and restarts; a live one's mailbox depth and
    (async actors) worst recent event-loop lag, from its worker's last report (None if none yet)."""
    stats = head.tasks.actor_stats()
    out = []
    for e in head.actors.list():
        meta = e.get("meta") or {}
        live = stats.get(e["actor_id"])
        if live is not None and (e["state"] != "ALIVE" or live["pid"] != e["pid"]):
            live = None  # a report from an earlier incarnation's worker
        out.append({
            "actor_id": e["actor_id"].hex(), "class_name": meta.get("class_name", "?"), "name": e["name"],
            "namespace": e["namespace"], "state": e["state"], "pid": e["pid"],
            "node_id": e["node_id"].hex() if e["node_id"] else "", "num_restarts": e["num_restarts"],
            "death_cause": e["death_cause"], "detached": e.get("detached", False),
            "job_id": e["job_id"].hex() if isinstance(e.get("job_id"), bytes) else "",
            "is_async": bool(meta.get("is_async", False)),
            "mailbox": live["mailbox"] if live else None,
            "loop_lag_ms": live["loop_lag_ms"] if live else None,
        })
    return out


def objects(head: HeadService) -> list[dict[str, Any]]:
    """Objects in the shared-memory stores: size, where each copy is (in memory or spilled to
    disk), the process that owns it, and who references it (refs in the owner, borrowers)."""
    owned: dict[bytes, tuple[Any, list[Any]]] = {}
    for report in head.tasks.owners.values():
        for stored in report.stored or []:
            owned[stored[0]] = (report, stored)
    here = os.uname().nodename
    out = []
    for oid, holders in head.objects.items():
        if not holders:
            continue
        rep, row = owned.get(oid, (None, None))
        spilled: bool | None = None
        for nid in holders:  # a copy on this machine: look at its node's spill directory
            info = head.nodes.get(nid, {}).get("info", {})
            if info.get("hostname") == here and info.get("spill_dir"):
                spilled = bool(spilled) or os.path.exists(os.path.join(info["spill_dir"], oid.hex()))
        out.append({
            "object_id": oid.hex(), "size": max(holders.values(), default=0),
            "nodes": [nid.hex() for nid in holders], "copies": len(holders), "spilled": spilled,
            "owner_pid": rep.pid if rep else None, "owner_role": rep.role if rep else None,
            "refs": row[2] if row else None, "borrowers": row[3] if row else None,
        })
    return out


def objects_summary(head: HeadService) -> dict[str, Any]:
    """Counts and bytes: stored objects per node and objects each owner process holds."""
    used = store_used(head)
    stored = [o for o in head.objects.values() if o]
    return {
        "stored_objects": len(stored),
        "stored_bytes": sum(max(h.values()) for h in stored),
        "bytes_by_node": {nid.hex(): n for nid, n in used.items()},
        "owners": [
            {"owner": rep.owner.hex(), "pid": rep.pid, "role": rep.role, "objects": rep.objects[0] if rep.objects else 0}
            for rep in head.tasks.owners.values()
        ],
    }


def timeline(head: HeadService, limit: int = 100_000) -> list[dict[str, Any]]:
    """Finished tasks as Chrome trace events (``chrome://tracing``, Perfetto): one row per worker."""
    events: list[dict[str, Any]] = []
    seen: set[int] = set()
    for t in list(head.tasks.finished)[-limit:]:
        start = t.get("started_at") or t.get("submitted_at") or 0.0
        end = t.get("ended_at") or start
        pid = int(t.get("worker_pid") or 0)
        if pid not in seen:
            seen.add(pid)
            events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": pid,
                           "args": {"name": f"worker pid={pid}"}})
        events.append({
            "name": t["name"], "cat": "task", "ph": "X", "pid": pid, "tid": pid,
            "ts": start * 1e6, "dur": max(0.0, end - start) * 1e6,
            "args": {"task_id": jsonable(t["task_id"]), "state": t["state"], "error": t.get("error"),
                     "node_id": jsonable(t.get("node_id")), "submitted_at": t.get("submitted_at")},
        })
    return events


# ---------------------------------------------------------------- logs
async def logs(head: HeadService, worker: str, q: str = "", limit: int = 1000) -> dict[str, Any]:
    """A worker's log lines (``worker``: pid, worker id, or an actor id), or every node's log files."""
    worker = worker.strip()
    for a in actors(head):  # an actor id (or its prefix) names the worker it lives on
        if len(worker) >= 8 and not worker.isdigit() and a["actor_id"].startswith(worker.lower()) and a["pid"]:
            worker = str(a["pid"])
            break

    async def ask(node_id: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            conn = await head.node_client(node_id)
            req = m.GetLogs(rid=0, worker=worker, q=q, limit=limit)
            return node_id, await asyncio.wait_for(conn.request(req), NODE_QUERY_TIMEOUT_S)
        except Exception as exc:
            log.debug("node %s did not answer for logs: %s", node_id.hex()[:8], exc)
            return node_id, None

    alive = [nid for nid, n in head.nodes.items() if n["alive"]]
    answers = [(nid, a) for nid, a in await asyncio.gather(*(ask(nid) for nid in alive)) if a is not None]
    if not worker:
        return {"files": [{**f, "node_id": nid.hex()} for nid, a in answers for f in a.get("files", [])]}
    for nid, a in answers:
        if a.get("found"):
            return {**a, "node_id": nid.hex()}
    return {"found": False, "worker": worker, "pid": 0, "lines": [], "node_id": ""}
