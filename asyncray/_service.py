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
    """Base class: subclasses implement ``_start`` and ``_stop``.

    Every background task of a service runs in the service's one ``asyncio.TaskGroup``: the
    group lives in a runner task from ``start()`` to ``stop()``, and stopping cancels the
    runner, so the group cancels and awaits every child (no task outlives its service). A
    child's unexpected exception is logged with its traceback and does not take the group,
    and so the service, down with it; long-lived loops run under :func:`supervised`.
    """

    name = "service"

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._group_holder: asyncio.Task[None] | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._started = False
        self._stopped = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Future[Any]:
        """Run a coroutine in this service's task group; an unexpected failure is logged, not lost.

        After ``stop()`` (or before ``start()``) the coroutine is not run: the returned future
        is already cancelled.
        """
        group = self._group
        if group is None or self._stopped:
            coro.close()
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.cancel()
            return fut
        label = name or getattr(coro, "__qualname__", "task")
        return group.create_task(self._guarded(coro, label), name=label)

    async def _guarded(self, coro: Coroutine[Any, Any, Any], name: str) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            if not self._stopped:
                log.exception("%s: background task %s failed", self.name, name)
            return None

    def supervise(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Future[Any]:
        """Run a long-lived loop owned by this service, restarted (and logged) when it crashes."""
        return self.spawn(supervised(f"{self.name}: {name}", run), name)

    async def start(self) -> None:
        """Open the task group, bind listeners and start background loops; returns once serving."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._group_holder = loop.create_task(self._hold_group(opened), name=f"{self.name} task group")
        await opened
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _hold_group(self, opened: asyncio.Future[None]) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            opened.set_result(None)
            await asyncio.Event().wait()  # until stop() cancels this runner, and so the group

    async def stop(self) -> None:
        """Close listeners, cancel background work, release resources. Safe to call twice."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        for server in self._servers:
            server.close()
        runner = self._group_holder
        if runner is not None:
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself was cancelled, not only the group
        self._group = None
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
