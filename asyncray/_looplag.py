"""Event-loop lag: how late a loop wakes a sleeper. A busy or blocked loop shows up here."""

from __future__ import annotations

import asyncio
from collections import deque


async def probe_loop_lag(samples: deque[float], interval_s: float) -> None:
    """Forever: sleep ``interval_s`` and append the overshoot (seconds) to ``samples``."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        samples.append(max(0.0, loop.time() - t0 - interval_s))
