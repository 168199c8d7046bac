"""A progress bar for results that a person waits on (issue "Seeing the cluster").

    for ref in asyncray.util.progress([f.remote(i) for i in range(1000)], desc="f"):
        use(asyncray.get(ref))

Refs come back in completion order (like ``as_completed``). On a terminal the bar
redraws in place on stderr; elsewhere (logs, CI, notebooks without a terminal) a plain
line is written every few seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["progress"]

BAR_WIDTH = 30
# How often a non-terminal gets a line, and a terminal a redraw, at most.
PLAIN_INTERVAL_S = 5.0
TTY_INTERVAL_S = 0.1


def _line(desc: str, done: int, total: int, started: float, bar: bool) -> str:
    elapsed = time.monotonic() - started
    frac = done / total if total else 1.0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    prefix = f"{desc}: " if desc else ""
    stats = f"{done}/{total} ({frac:.0%}) {elapsed:.1f}s elapsed"
    if done < total and rate > 0:
        stats += f", ~{eta:.1f}s left"
    if not bar:
        return f"{prefix}{stats}"
    filled = int(BAR_WIDTH * frac)
    return f"{prefix}[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {stats}"


def progress(refs: Any, *, desc: str = "", timeout: float | None = None, file: TextIO | None = None) -> Iterator[Any]:
    """Yield ``refs`` in the order they complete, showing how many are done.

    Args:
        refs: an ObjectRef or a list of them.
        desc: a label in front of the bar.
        timeout: as in ``as_completed``.
        file: where to draw (default ``sys.stderr``).

    Raises:
        GetTimeoutError: ``timeout`` passed before all refs were ready.
    """
    import asyncray

    items = list(refs) if isinstance(refs, list | tuple) else [refs]
    out = file if file is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    total = len(items)
    started = time.monotonic()
    last = 0.0
    done = 0

    def draw(final: bool = False) -> None:
        nonlocal last
        now = time.monotonic()
        if not final and now - last < (TTY_INTERVAL_S if tty else PLAIN_INTERVAL_S):
            return
        last = now
        text = _line(desc, done, total, started, bar=tty)
        out.write(f"\r{text}\x1b[K" if tty else text + "\n")
        if tty and final:
            out.write("\n")
        out.flush()

    draw()
    try:
        for ref in asyncray.as_completed(items, timeout=timeout):
            done += 1
            draw(final=done == total)
            yield ref
    finally:
        if done < total and tty:
            out.write("\n")
            out.flush()
