"""The dashboard's routes: pages, the JSON API under ``/api/``, ``/metrics``, token checks."""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from asyncray import _ids
from asyncray._head import state_api
from asyncray.dashboard import _metrics

if TYPE_CHECKING:
    from asyncray.dashboard import DashboardService

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
PAGES = ("cluster", "tasks", "actors", "objects", "logs", "timeline", "jobs")
TOKEN_COOKIE = "asyncray_token"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
SERVICE_KEY: web.AppKey[DashboardService] = web.AppKey("asyncray_dashboard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: json.dumps(v, default=str))


def _limit(request: web.Request) -> int:
    try:
        return max(0, min(MAX_LIMIT, int(request.query.get("limit", DEFAULT_LIMIT))))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None


def _filters(request: web.Request, skip: tuple[str, ...] = ("limit", "token")) -> dict[str, str]:
    return {k: v for k, v in request.query.items() if k not in skip and v != ""}


def _host_name(host: str) -> str:
    """``host`` of a Host header value without its port (``[::1]:8265`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(header: str, bound: str) -> bool:
    """True when a Host header names this machine: localhost, a loopback address, or ``bound``."""
    name = _host_name(header).rstrip(".")
    if name in ("localhost", _host_name(bound)):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback  # an address cannot be rebound, a name can
    except ValueError:
        return False


@web.middleware
async def _check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On loopback, answer only requests addressed to this machine by name (DNS rebinding)."""
    service = request.app[SERVICE_KEY]
    if service.check_host and not host_allowed(request.headers.get("Host", ""), service.host):
        return web.Response(status=403, text="asyncray dashboard: open it as http://127.0.0.1:<port> or "
                                             "http://localhost:<port>; other host names are refused\n")
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Off loopback, every request must carry the cluster token (SPEC 6)."""
    service = request.app[SERVICE_KEY]
    if not service.require_token:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else ""
    given = given or request.query.get("token", "") or request.cookies.get(TOKEN_COOKIE, "")
    if not hmac.compare_digest(given.encode(), service.token.encode()):
        return web.Response(status=401, text="asyncray dashboard: the cluster token is required "
                                             "(Authorization: Bearer <token>, or ?token=<token>)\n")
    response = await handler(request)
    if request.query.get("token") and isinstance(response, web.Response):
        response.set_cookie(TOKEN_COOKIE, service.token, httponly=True, samesite="Strict")
    return response


def build_app(service: DashboardService) -> web.Application:
    """The aiohttp application for one dashboard service."""
    app = web.Application(middlewares=[_check_host, _auth])
    app[SERVICE_KEY] = service
    with open(os.path.join(STATIC_DIR, "page.html"), encoding="utf-8") as f:
        template = f.read()
    head = service.head

    def page(name: str) -> Handler:
        body = template.replace("{{PAGE}}", name)

        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=body, content_type="text/html")

        return handler

    async def api_nodes(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "nodes", _limit(request), {"filters": _filters(request)}))

    async def api_workers(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "workers", _limit(request), {"filters": _filters(request)}))

    async def api_cluster(request: web.Request) -> web.Response:
        infos = await state_api.node_infos(head)
        return _json({
            "nodes": await state_api.nodes(head, infos), "workers": await state_api.workers(head, infos),
            "tasks": head.tasks.counts(), "loop_lag_s": service.loop_lag_s,
        })

    async def api_tasks(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "tasks", _limit(request), {"filters": _filters(request)}))

    async def api_tasks_summary(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "tasks_summary", 0))

    async def api_actors(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "actors", _limit(request), {"filters": _filters(request)}))

    async def api_actors_summary(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "actors_summary", 0))

    async def api_objects(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "objects", _limit(request), {"filters": _filters(request)}))

    async def api_objects_summary(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "objects_summary", 0))

    async def api_logs(request: web.Request) -> web.Response:
        worker = request.query.get("worker", "").strip()
        if worker and not await _known_log_id(worker):
            return _json({"error": f"no log for worker {worker[:80]!r}"}, status=404)
        args = {"worker": worker, "q": request.query.get("q", "")}
        res = await state_api.collect_state(head, "logs", _limit(request), args)
        if worker and not res.get("found"):
            return _json({**res, "error": "no such log"}, status=404)
        return _json(res)

    async def _known_log_id(worker: str) -> bool:
        """Whether ``worker`` names a log the nodes list: a pid, a worker id, or an actor's id (prefix)."""
        if not re.fullmatch(r"[0-9a-fA-F]{1,64}", worker):
            return False  # only ids reach a node, never a path
        worker = worker.lower()
        files = (await state_api.logs(head, ""))["files"]
        if worker.isdigit() and any(f["pid"] == int(worker) for f in files):
            return True
        shorts = {str(f["worker"]).lower() for f in files}
        if worker in shorts or (len(worker) > 8 and len(worker) % 2 == 0 and _ids.short(bytes.fromhex(worker)) in shorts):
            return True
        return len(worker) >= 8 and any(a["pid"] and a["actor_id"].startswith(worker) for a in state_api.actors(head))

    async def api_timeline(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", MAX_LIMIT))
        events = await state_api.collect_state(head, "timeline", limit)
        response = _json({"traceEvents": events, "displayTimeUnit": "ms"})
        if request.query.get("download"):
            response.headers["Content-Disposition"] = 'attachment; filename="asyncray-timeline.json"'
        return response

    async def api_jobs(request: web.Request) -> web.Response:
        return _json(await state_api.collect_state(head, "jobs", _limit(request), {"filters": _filters(request)}))

    async def api_job(request: web.Request) -> web.Response:
        try:
            return _json(await state_api.collect_state(head, "job", 1, {"job_id": request.match_info["job_id"]}))
        except KeyError:
            return _json({"error": "no such job"}, status=404)

    async def api_job_logs(request: web.Request) -> web.Response:
        args = {"job_id": request.match_info["job_id"], "offset": int(request.query.get("offset", 0))}
        try:
            res = await state_api.collect_state(head, "job_logs", 1, args)
        except KeyError:
            return _json({"error": "no such job"}, status=404)
        res["data"] = res["data"].decode("utf-8", errors="replace")
        return _json(res)

    async def metrics(request: web.Request) -> web.Response:
        text = await _metrics.render(head, service.loop_lag_s)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app.router.add_get("/", page("cluster"))
    for name in PAGES:
        app.router.add_get(f"/{name}", page(name))
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/api/cluster", api_cluster)
    app.router.add_get("/api/nodes", api_nodes)
    app.router.add_get("/api/workers", api_workers)
    app.router.add_get("/api/tasks", api_tasks)
    app.router.add_get("/api/tasks/summary", api_tasks_summary)
    app.router.add_get("/api/actors", api_actors)
    app.router.add_get("/api/actors/summary", api_actors_summary)
    app.router.add_get("/api/objects", api_objects)
    app.router.add_get("/api/objects/summary", api_objects_summary)
    app.router.add_get("/api/logs", api_logs)
    app.router.add_get("/api/timeline", api_timeline)
    app.router.add_get("/api/jobs", api_jobs)
    app.router.add_get("/api/jobs/{job_id}", api_job)
    app.router.add_get("/api/jobs/{job_id}/logs", api_job_logs)
    app.router.add_get("/metrics", metrics)
    return app
