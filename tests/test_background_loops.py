"""Background loops never die unseen, and reading shared tables never trips over other threads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import asyncray
from asyncray import _service
from asyncray._client import context


async def test_a_crashing_loop_is_logged_with_its_traceback_and_restarted(caplog, monkeypatch):
    monkeypatch.setattr(_service, "RESTART_DELAY_S", 0.01)
    runs = []
    done = asyncio.Event()

    async def loop() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise KeyError(f"bad input {len(runs)}")
        done.set()
        await asyncio.sleep(3600)

    caplog.set_level(logging.ERROR, logger="asyncray._service")
    task = asyncio.get_running_loop().create_task(_service.supervised("the watcher", loop))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(runs) == 3
    crashes = [r for r in caplog.records if "the watcher crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert crashes[0].exc_info is not None and "bad input 1" in caplog.text and "Traceback" in caplog.text


async def test_a_loop_that_returns_is_done():
    runs = []

    async def once() -> None:
        runs.append(1)

    await asyncio.wait_for(_service.supervised("once", once), 1)
    assert runs == [1]


async def test_service_loops_are_supervised(monkeypatch, caplog):
    monkeypatch.setattr(_service, "RESTART_DELAY_S", 0.01)
    caplog.set_level(logging.ERROR, logger="asyncray._service")
    ticks = []

    class Ticker(_service.Service):
        name = "ticker"

        async def _start(self) -> None:
            self.supervise(self._tick, "tick")

        async def _tick(self) -> None:
            ticks.append(1)
            if len(ticks) == 1:
                raise ValueError("first tick fails")
            await asyncio.sleep(3600)

    async with Ticker():
        deadline = time.monotonic() + 5
        while len(ticks) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert len(ticks) == 2
    assert "ticker: tick crashed" in caplog.text and "first tick fails" in caplog.text


def test_task_report_survives_refs_freed_by_the_garbage_collector(fresh_ray):
    """Refs in reference cycles are freed by the collector, at any allocation in any thread;
    the report built from the object table must not see the table change under it (this
    raised "dictionary changed size during iteration" and killed the report loop)."""
    core = context.get_core()
    assert core is not None
    keep = [asyncray.put(i) for i in range(2000)]  # a table big enough to be mid-walk often
    stop = threading.Event()

    def churn() -> None:
        held = []
        while not stop.is_set():
            cycle = [asyncray.put(1)]
            cycle.append(cycle)
            held.append(cycle)
            if len(held) > 50:
                held.clear()

    thread = threading.Thread(target=churn)
    thread.start()
    reports = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            core.reporter.report()
            reports += 1
    finally:
        stop.set()
        thread.join()
    assert reports > 100
    assert len(keep) == 2000
