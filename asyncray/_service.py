"""The shape every component shares: start, serve, stop; cancellation-safe (STYLE section 3).

A service owns the background tasks it spawns; ``stop()`` cancels and awaits all of them,
so no task outlives its service. ``stop()`` is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Service:
    """Base class: subclasses implement ``_start`` and ``_stop``."""

    name = "service"

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._started = False
        self._stopped = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run a coroutine owned by this service; an unexpected failure is logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._stopped:
            log.error("%s: background task %s failed", self.name, task.get_name(), exc_info=task.exception())

    async def start(self) -> None:
        """Bind listeners and start background loops; returns once serving."""
        if self._started:
            return
        self._started = True
        await self._start()

    async def stop(self) -> None:
        """Close listeners, cancel background work, release resources. Safe to call twice."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._stop()
        finally:
            for server in self._servers:
                try:
                    await asyncio.wait_for(server.wait_closed(), 1.0)
                except TimeoutError:
                    pass

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        return None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
