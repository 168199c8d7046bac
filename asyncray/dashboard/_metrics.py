"""Prometheus text exposition (format 0.0.4) of the cluster's state, built on request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncray._head import state_api
from asyncray._head.state import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from asyncray._head.service import HeadService


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    """Collects metric families: HELP and TYPE once, then samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, Any] | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_num(value)}")
        else:
            self.lines.append(f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


async def render(head: HeadService, loop_lag_s: float) -> str:
    """Every metric as Prometheus text.

    Args:
        head: the head service.
        loop_lag_s: the latest event-loop lag measured by the dashboard's probe.
    """
    w = _Writer()
    infos = await state_api.node_infos(head)
    nodes = await state_api.nodes(head, infos)
    workers = await state_api.workers(head, infos)

    w.family("asyncray_tasks", "gauge", "Tasks by state (finished and failed are totals since the head started).")
    for state, n in sorted(head.tasks.counts().items()):
        w.sample("asyncray_tasks", n, {"state": state})

    table = head.tasks
    w.family("asyncray_task_latency_seconds", "histogram", "Time from submit to end of finished tasks.")
    cumulative = 0
    for bound, n in zip(LATENCY_BUCKETS_S, table.latency_counts, strict=False):
        cumulative += n
        w.sample("asyncray_task_latency_seconds_bucket", cumulative, {"le": f"{bound:g}"})
    total = sum(table.latency_counts)
    w.sample("asyncray_task_latency_seconds_bucket", total, {"le": "+Inf"})
    w.sample("asyncray_task_latency_seconds_sum", table.latency_sum)
    w.sample("asyncray_task_latency_seconds_count", total)

    w.family("asyncray_object_store_used_bytes", "gauge", "Bytes of objects in each node's shared-memory store.")
    for nd in nodes:
        w.sample("asyncray_object_store_used_bytes", nd["object_store_used"], {"node_id": nd["node_id"][:8]})
    w.family("asyncray_object_store_capacity_bytes", "gauge", "Object store size of each node.")
    for nd in nodes:
        w.sample("asyncray_object_store_capacity_bytes", nd["object_store_total"], {"node_id": nd["node_id"][:8]})
    w.family("asyncray_object_store_spilled_bytes", "gauge", "Bytes of objects spilled to disk.")
    for nd in nodes:
        w.sample("asyncray_object_store_spilled_bytes", nd.get("object_store_spilled", 0), {"node_id": nd["node_id"][:8]})
    w.family("asyncray_objects_stored", "gauge", "Objects in shared-memory stores.")
    w.sample("asyncray_objects_stored", sum(1 for h in head.objects.values() if h))

    w.family("asyncray_workers", "gauge", "Worker processes by state.")
    by_state: dict[tuple[str, str], int] = {}
    for wk in workers:
        key = (wk["node_id"][:8], wk["state"])
        by_state[key] = by_state.get(key, 0) + 1
    for (node, state), n in sorted(by_state.items()):
        w.sample("asyncray_workers", n, {"node_id": node, "state": state})
    w.family("asyncray_worker_rss_bytes", "gauge", "Resident memory of all workers of a node.")
    rss: dict[str, int] = {}
    for wk in workers:
        rss[wk["node_id"][:8]] = rss.get(wk["node_id"][:8], 0) + wk["rss"]
    for node, n in sorted(rss.items()):
        w.sample("asyncray_worker_rss_bytes", n, {"node_id": node})

    w.family("asyncray_actors", "gauge", "Actors by state.")
    actors = state_api.actors(head)
    actor_states: dict[str, int] = {}
    for a in actors:
        actor_states[a["state"]] = actor_states.get(a["state"], 0) + 1
    for state, n in sorted(actor_states.items()):
        w.sample("asyncray_actors", n, {"state": state})
    w.family("asyncray_actor_mailbox", "gauge", "Calls a live actor has received and not finished.")
    for a in actors:
        if a["mailbox"] is not None:
            w.sample("asyncray_actor_mailbox", a["mailbox"], {"actor_id": a["actor_id"], "class": a["class_name"]})
    w.family("asyncray_actor_loop_lag_seconds", "gauge", "Worst recent event-loop lag of an async actor's worker.")
    for a in actors:
        if a["loop_lag_ms"] is not None:
            labels = {"actor_id": a["actor_id"], "class": a["class_name"]}
            w.sample("asyncray_actor_loop_lag_seconds", a["loop_lag_ms"] / 1000, labels)

    w.family("asyncray_nodes", "gauge", "Nodes by liveness.")
    w.sample("asyncray_nodes", sum(1 for nd in nodes if nd["alive"]), {"state": "ALIVE"})
    w.sample("asyncray_nodes", sum(1 for nd in nodes if not nd["alive"]), {"state": "DEAD"})
    host_metrics = (
        ("asyncray_node_cpu_percent", "cpu_percent", "CPU use of each live node's machine."),
        ("asyncray_node_memory_used_bytes", "mem_used", "Memory in use on each live node's machine."),
        ("asyncray_node_memory_total_bytes", "mem_total", "Memory of each live node's machine."),
    )
    for metric, host_key, help_text in host_metrics:
        w.family(metric, "gauge", help_text)
        for nd in nodes:
            if nd["host"]:
                labels = {"node_id": nd["node_id"][:8], "hostname": nd["host"].get("hostname", "")}
                w.sample(metric, nd["host"].get(host_key, 0), labels)
    for metric, which in (("asyncray_node_resource_total", "resources"), ("asyncray_node_resource_available", "available")):
        w.family(metric, "gauge", f"Logical resources of each node ({which}).")
        for nd in nodes:
            for res in sorted(nd["resources"]):
                if not res.startswith("node:"):
                    w.sample(metric, nd[which].get(res, 0.0), {"node_id": nd["node_id"][:8], "resource": res})

    w.family("asyncray_jobs", "gauge", "Jobs by status.")
    jobs: dict[str, int] = {}
    for j in head.jobs.list():
        jobs[j["status"]] = jobs.get(j["status"], 0) + 1
    for status, n in sorted(jobs.items()):
        w.sample("asyncray_jobs", n, {"status": status})

    w.family("asyncray_head_event_loop_lag_seconds", "gauge", "How late the head's event loop ran a timer, lately.")
    w.sample("asyncray_head_event_loop_lag_seconds", loop_lag_s)
    return w.text()
