"""Worker stdout/stderr: kept in the worker's log file and forwarded, line by line, to drivers.

Each line is prefixed with where it ran, e.g. ``(f pid=1234 node=ab12cd34)`` (SPEC section 6).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import Any, TextIO

from asyncray import _ids
from asyncray._client import context
from asyncray._wire import messages as m

# Forwarded lines are batched per loop iteration; a flood is capped per batch to keep
# frames small (the rest waits for the next iteration).
MAX_LINES_PER_BATCH = 1000


class LogForwarder(io.TextIOBase):
    """A text stream that tees into the log file and ships whole lines to the node."""

    def __init__(self, core: Any, stream: str, original: TextIO) -> None:
        super().__init__()
        self._core = core
        self._stream = stream
        self._original = original
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()
        self._pending: list[list[str]] = []
        self._flush_scheduled = False
        self._suffix = f"pid={os.getpid()} node={_ids.short(core.node_id)})"

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        try:
            self._original.write(s)
        except (ValueError, OSError):
            pass
        tid = threading.get_ident()
        text = self._partial.pop(tid, "") + s
        if "\n" not in text:
            self._partial[tid] = text
            return len(s)
        *lines, rest = text.split("\n")
        if rest:
            self._partial[tid] = rest
        task = context.current_task.get()
        prefix = f"({task.name if task else 'worker'} {self._suffix}"
        with self._lock:
            self._pending.extend([prefix, self._stream, line] for line in lines)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._core.call_soon(self._flush_to_node)
        return len(s)

    def flush(self) -> None:
        try:
            self._original.flush()
        except (ValueError, OSError):
            pass

    def _flush_to_node(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[:MAX_LINES_PER_BATCH], self._pending[MAX_LINES_PER_BATCH:]
            self._flush_scheduled = bool(self._pending)
        if self._flush_scheduled:
            self._core.call_soon(self._flush_to_node)
        node = self._core.node
        if batch and node is not None and node.is_open:
            node.send(m.LogLines(worker_id=self._core.worker_id, pid=os.getpid(), lines=batch))


def install(core: Any) -> None:
    """Replace sys.stdout/sys.stderr of this worker with forwarders."""
    sys.stdout = LogForwarder(core, "stdout", sys.__stdout__ or sys.stdout)
    sys.stderr = LogForwarder(core, "stderr", sys.__stderr__ or sys.stderr)
