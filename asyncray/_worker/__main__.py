"""Entry point of a worker process: ``python -m asyncray._worker`` (started by the node).

The event loop runs on a background thread; the main thread runs sync tasks, so that
``cancel()`` can interrupt a blocking call in user code with a signal (signals are only
delivered to Python's main thread).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from asyncray._client.core import Core, install
from asyncray._client.portal import Portal
from asyncray._worker import logs
from asyncray._worker.executor import TaskExecutor
from asyncray._wire import messages as m

log = logging.getLogger("asyncray.worker")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the node process goes away (no orphans, SPEC 5)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def _start() -> TaskExecutor:
    env = os.environ
    core = Core(
        role="worker",
        node_address=env["ASYNCRAY_NODE_ADDRESS"],
        head_address=env["ASYNCRAY_HEAD_ADDRESS"],
        session_dir=env["ASYNCRAY_SESSION_DIR"],
        store_dir=env["ASYNCRAY_STORE_DIR"],
        node_id=bytes.fromhex(env["ASYNCRAY_NODE_ID"]),
        token=env.get("ASYNCRAY_TOKEN", ""),
        worker_id=bytes.fromhex(env["ASYNCRAY_WORKER_ID"]),
    )
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
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    portal = Portal()
    try:
        executor = portal.call(_start())
        executor.serve_sync_tasks()
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
