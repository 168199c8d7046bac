"""The dashboard's routes: pages, the JSON API under ``/api/``, ``/metrics``, token checks."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

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
    app = web.Application(middlewares=[_auth])
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
        args = {"worker": request.query.get("worker", ""), "q": request.query.get("q", "")}
        return _json(await state_api.collect_state(head, "logs", _limit(request), args))

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
