"""Run asyncray inside an aiohttp application (SPEC 3, "Embedding").

    app = web.Application()
    asyncray.aiohttp.setup(app, num_cpus=2)

starts the runtime on the application's own loop when the app starts and stops it on
cleanup, with the lifespan shape of ``cleanup_ctx``: a failed start is reported as such and
nothing is left running. Handlers ``await f.remote(x)`` and ``await actor.m.remote(y)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from asyncray import aio

__all__ = ["RUNTIME_KEY", "setup"]

RUNTIME_KEY = web.AppKey("asyncray_runtime", object)


def setup(app: web.Application, **init_kwargs: Any) -> Callable[[web.Application], AsyncIterator[None]]:
    """Start asyncray with ``app`` and stop it on cleanup; returns the cleanup context added.

    Args:
        app: the aiohttp application.
        **init_kwargs: passed to ``asyncray.aio.init`` (``num_cpus``, ``namespace``, ...).
    """

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        app[RUNTIME_KEY] = await aio.init(**init_kwargs)
        try:
            yield
        finally:
            await aio.shutdown()

    app.cleanup_ctx.append(runtime_ctx)
    return runtime_ctx
