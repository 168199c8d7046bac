"""Shared fixtures: a runtime per module, and checks that nothing is left behind."""

from __future__ import annotations

import asyncio
import glob
import os
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

import asyncray

SHM_GLOB = f"/dev/shm/asyncray-s{os.getpid()}-*"


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``cond`` until true or the deadline; returns the last result (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


class LoopLagProbe:
    """Measures how late a running event loop wakes a sleeper: a blocked loop shows up here.

    Use as ``async with LoopLagProbe() as probe: ...``, then look at ``probe.worst``.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(loop.time() - t0 - self.interval)

    @property
    def worst(self) -> float:
        """The longest extra wait seen, in seconds."""
        return max(self.lags, default=0.0)

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


def is_running(proc: int | psutil.Process) -> bool:
    """True while a process exists and is not a zombie.

    One call that tolerates the process vanishing between looking it up and reading its
    status: ``pid_exists(p) and Process(p).status()`` raises NoSuchProcess in that window,
    which made a test that waits for an actor's worker to exit flaky.
    """
    try:
        p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(autouse=True, scope="module")
def _no_leaks_per_module() -> Iterator[None]:
    """After each test module: the runtime is down, no child process and no store segment remain."""
    shm_before = set(glob.glob(SHM_GLOB))
    yield
    if asyncray.is_initialized():
        asyncray.shutdown()
    assert wait_for(lambda: not [p for p in _children() if is_running(p)]), (
        f"processes left running: {[(p.pid, p.cmdline()) for p in _children()]}"
    )
    leaked = set(glob.glob(SHM_GLOB)) - shm_before
    assert not leaked, f"shared-memory directories left behind: {leaked}"


@pytest.fixture(scope="module")
def ray() -> Iterator[object]:
    """An embedded 2-CPU runtime shared by the tests of one module."""
    asyncray.init(num_cpus=2)
    yield asyncray
    asyncray.shutdown()


@pytest.fixture
def fresh_ray() -> Iterator[object]:
    """A runtime of its own for one test (for tests that break things)."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    asyncray.init(num_cpus=2)
    yield asyncray
    asyncray.shutdown()


def pids_of_workers() -> list[int]:
    """Worker processes of the embedded runtime (children of this process running the worker)."""
    return [p.pid for p in _children() if "asyncray._worker" in " ".join(p.cmdline())]


os.environ.setdefault("PYTHONUNBUFFERED", "1")
