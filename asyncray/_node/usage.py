"""What a node tells people about its machine and its workers: CPU, memory, log files.

Computed only when asked (the dashboard, the CLI), never on a timer: a cluster nobody
looks at pays nothing for it (issue "Seeing the cluster").
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import psutil

from asyncray import _ids

# psutil measures CPU% between two calls on the same Process object, so keep them.
_procs: dict[int, psutil.Process] = {}
# A log file is read from its end: at most this many bytes of it per answer.
MAX_LOG_READ_BYTES = 4 * 1024 * 1024


def process_usage(pid: int) -> dict[str, Any]:
    """CPU percent since the last call and resident memory of one process (zeros if unknown)."""
    if not pid:
        return {"cpu_percent": 0.0, "rss": 0}
    proc = _procs.get(pid)
    try:
        if proc is None:
            proc = _procs[pid] = psutil.Process(pid)
        with proc.oneshot():
            return {"cpu_percent": proc.cpu_percent(None), "rss": proc.memory_info().rss}
    except psutil.Error:
        _procs.pop(pid, None)
        return {"cpu_percent": 0.0, "rss": 0}


def host_usage() -> dict[str, Any]:
    """This machine's CPU use (percent since the last call) and memory."""
    vm = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(None),
        "num_cpus": os.cpu_count() or 1,
        "mem_total": vm.total,
        "mem_used": vm.total - vm.available,
        "hostname": os.uname().nodename,
    }


def _worker_key(worker: str, pids: dict[str, int]) -> str | None:
    """The short id of the worker named by pid, full hex id or short id."""
    worker = worker.strip()
    if worker.isdigit():
        return next((short for short, pid in pids.items() if pid == int(worker)), None)
    if len(worker) > 8 and re.fullmatch(r"[0-9a-fA-F]+", worker) and len(worker) % 2 == 0:
        return _ids.short(bytes.fromhex(worker))
    return worker or None


def read_logs(log_dir: str, pids: dict[str, int], worker: str = "", q: str = "", limit: int = 1000) -> dict[str, Any]:
    """Worker log files of one node.

    Args:
        log_dir: the node's log directory (``<session>/logs``).
        pids: short worker id -> pid of the workers alive now.
        worker: pid, worker id or short id; empty lists the files instead.
        q: keep only lines containing this text (case-insensitive).
        limit: at most this many lines, the last ones.

    Returns:
        ``{"files": [...]}`` without ``worker``; else ``{"found", "worker", "pid", "lines"}``.
    """
    if not worker:
        files = []
        for path in sorted(glob.glob(os.path.join(log_dir, "worker-*.log"))):
            short = os.path.basename(path)[len("worker-"):-len(".log")]
            files.append({"worker": short, "pid": pids.get(short, 0), "size": os.path.getsize(path)})
        return {"files": files}
    key = _worker_key(worker, pids)
    path = os.path.join(log_dir, f"worker-{key}.log") if key else ""
    if not key or not os.path.exists(path):
        return {"found": False, "worker": worker, "pid": 0, "lines": []}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - MAX_LOG_READ_BYTES))
        text = f.read().decode("utf-8", errors="replace")
    lines = text.splitlines()
    if q:
        needle = q.lower()
        lines = [ln for ln in lines if needle in ln.lower()]
    return {"found": True, "worker": key, "pid": pids.get(key, 0), "lines": lines[-max(0, limit):]}
