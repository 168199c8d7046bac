"""A small JSON service that runs its work on asyncray, inside aiohttp's own event loop.

    python examples/aiohttp_service.py --port 8080
    curl -s localhost:8080/score -d '{"text": "asyncray makes the loop happy"}'
    curl -s localhost:8080/stats

``/score`` runs a CPU-bound scoring function as a task on the worker pool; ``/stats`` asks a
counter actor how many requests were scored. Handlers just ``await f.remote(x)``: the event
loop never blocks, so the service keeps answering while tasks run.
"""

from __future__ import annotations

import argparse
import hashlib

from aiohttp import web

import asyncray
import asyncray.aiohttp


@asyncray.remote
def score(text: str) -> dict:
    """A stand-in for model inference: deterministic, CPU-bound, a few milliseconds."""
    digest = text.encode()
    for _ in range(2000):
        digest = hashlib.sha256(digest).digest()
    return {"text": text, "words": len(text.split()), "score": digest[0] / 255}


@asyncray.remote
class Stats:
    """Counts scored requests; one instance serves every handler."""

    def __init__(self) -> None:
        self.scored = 0
        self.words = 0

    def record(self, words: int) -> int:
        self.scored += 1
        self.words += words
        return self.scored

    def summary(self) -> dict:
        return {"scored": self.scored, "words": self.words}


STATS = web.AppKey("stats", object)


async def start_stats(app: web.Application):
    app[STATS] = Stats.remote()
    yield


async def handle_score(request: web.Request) -> web.Response:
    body = await request.json()
    text = body.get("text")
    if not isinstance(text, str):
        raise web.HTTPBadRequest(text='expected a JSON body like {"text": "..."}')
    result = await score.remote(text)
    result["count"] = await request.app[STATS].record.remote(result["words"])
    return web.json_response(result)


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATS].summary.remote())


def make_app(**init_kwargs) -> web.Application:
    """The application; asyncray starts and stops with it."""
    app = web.Application()
    asyncray.aiohttp.setup(app, **init_kwargs)
    app.cleanup_ctx.append(start_stats)  # after setup: the runtime is up when this runs
    app.add_routes([web.post("/score", handle_score), web.get("/stats", handle_stats)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args()
    web.run_app(make_app(num_cpus=args.num_cpus), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
