"""The shape every component shares: start, serve, stop; cancellation-safe (STYLE section 3).

A service owns the background tasks it spawns; ``stop()`` cancels and awaits all of them,
so no task outlives its service. ``stop()`` is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

# A crashed loop restarts after this pause, doubled per crash up to the cap; a loop that ran
# this long since its last start counts as healthy again (the pause starts over).
RESTART_DELAY_S = 0.1
RESTART_DELAY_MAX_S = 5.0
HEALTHY_AFTER_S = 60.0


async def supervised(
    name: str, run: Callable[[], Coroutine[Any, Any, None]], logger: logging.Logger = log,
) -> None:
    """Run a long-lived loop for good: a crash is logged with its traceback and the loop restarts.

    ``run`` makes a fresh coroutine each time. A loop that returns is done; cancellation
    ends it. A background loop never dies unseen (a head that silently stopped watching its
    nodes, or a core that stopped reporting, would look alive and be wrong forever).
    """
    delay = RESTART_DELAY_S
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if time.monotonic() - started > HEALTHY_AFTER_S:
                delay = RESTART_DELAY_S
            logger.exception("%s crashed; restarting it in %.1f s", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_DELAY_MAX_S)


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

    def supervise(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[Any]:
        """Run a long-lived loop owned by this service, restarted (and logged) when it crashes."""
        return self.spawn(supervised(f"{self.name}: {name}", run), name)

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
