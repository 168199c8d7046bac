"""Entry point of a worker process: ``python -m asyncray._worker`` (started by the node).

The event loop runs on a background thread; the main thread runs sync tasks, so that
``cancel()`` can interrupt a blocking call in user code with a signal (signals are only
delivered to Python's main thread).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable

from asyncray._client.core import Core, install
from asyncray._client.portal import Portal
from asyncray._wire import messages as m
from asyncray._worker import logs
from asyncray._worker.executor import TaskExecutor

log = logging.getLogger("asyncray.worker")

# Sent by the kernel when the node goes away (SIGTERM is the node's own "stop").
PARENT_DIED_SIGNAL = signal.SIGHUP


def _die_with_parent() -> None:
    """Ask Linux to signal us when the node process goes away (no orphans, SPEC 5)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, PARENT_DIED_SIGNAL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_without_node(parent: int) -> None:
    """The node is gone: exit, and if it died without cleaning up (SIGKILL), remove its leftovers."""
    if os.getppid() != parent:
        for key in ("ASYNCRAY_STORE_DIR", "ASYNCRAY_SESSION_DIR"):
            shutil.rmtree(os.environ.get(key, ""), ignore_errors=True)
    os._exit(0)


def _on_node_lost(parent: int) -> None:
    # The connection drops (and the death signal comes, sent when the thread that started us
    # ends) before the kernel reparents us: that waits until every thread of the dying node
    # process is gone. Give it that moment. A node stopping on purpose sends SIGTERM first.
    deadline = time.monotonic() + 2.0
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    _exit_without_node(parent)


async def _start(on_node_lost: Callable[[], None]) -> TaskExecutor:
    env = os.environ
    core = Core(
        role="worker",
        node_address=env["ASYNCRAY_NODE_ADDRESS"],
        head_address=env["ASYNCRAY_HEAD_ADDRESS"],
        head_lookup=env.get("ASYNCRAY_HEAD_LOOKUP", ""),
        session_dir=env["ASYNCRAY_SESSION_DIR"],
        store_dir=env["ASYNCRAY_STORE_DIR"],
        node_id=bytes.fromhex(env["ASYNCRAY_NODE_ID"]),
        token=env.get("ASYNCRAY_TOKEN", ""),
        worker_id=bytes.fromhex(env["ASYNCRAY_WORKER_ID"]),
        listen_host=env.get("ASYNCRAY_LISTEN_HOST", ""),
        spill_dir=env.get("ASYNCRAY_SPILL_DIR", ""),
    )
    core.on_node_lost = on_node_lost
    install(core)
    executor = TaskExecutor(core)
    core.executor = executor
    await core.start()
    logs.install(core)
    assert core.node is not None
    core.node.send(m.RegisterWorker(worker_id=core.worker_id, pid=os.getpid(), address=core.address))
    return executor


def main() -> None:
    """Run the worker until its node goes away (the core then exits the process)."""
    # The node's pid comes from the node: if it died before we got here, getppid() already
    # names our new parent, and comparing with it would hide that the node is gone.
    parent = int(os.environ.get("ASYNCRAY_NODE_PID", os.getppid()))
    signal.signal(signal.SIGTERM, lambda *_: _exit_without_node(parent))
    signal.signal(PARENT_DIED_SIGNAL, lambda *_: _on_node_lost(parent))
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    portal = Portal()
    try:
        try:
            executor = portal.call(_start(lambda: _on_node_lost(parent)))
        except OSError:  # the node went away while we were starting
            _on_node_lost(parent)
        executor.serve_sync_tasks()
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
