"""A background process that runs a head or a node until told to stop (``asyncray start``).

    python -m asyncray._daemon --head --host 127.0.0.1 --port 6379 --storage URL --ready-file F ...
    python -m asyncray._daemon --address HOST:PORT [--head-lookup URL] --ready-file F ...

The head runs alone in its process (with the dashboard): a head that dies takes no worker
with it, and one started again on the same storage takes the cluster back. When serving, the
daemon writes a JSON line to the ready file (addresses, node id, pid) so the CLI knows it is
up. SIGTERM or SIGINT stops the services cleanly: workers end and a node's shared-memory
store is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from asyncray import _ids
from asyncray._client.runtime import new_session_dir, node_resources, spill_dir_for, store_dir_for
from asyncray._head.locate import is_lookup, locate_head
from asyncray._head.service import DEFAULT_NODE_TIMEOUT_S, HeadService
from asyncray._node.service import NodeConfig, NodeService

log = logging.getLogger("asyncray.daemon")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the CLI passes its own through)."""
    p = argparse.ArgumentParser(prog="python -m asyncray._daemon")
    p.add_argument("--head", action="store_true")
    p.add_argument("--address", default=None, help="the head to join (host:port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--resources", default="{}")
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--object-store-dir", default=None)
    p.add_argument("--object-spilling-dir", default=None)
    p.add_argument("--node-timeout", type=float, default=DEFAULT_NODE_TIMEOUT_S)
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--include-dashboard", action="store_true")
    p.add_argument("--storage", default="memory://", help="where the head keeps its tables")
    p.add_argument("--head-lookup", default="", help="where a node finds the head again after it restarts")
    p.add_argument("--session-name", required=True)
    p.add_argument("--ready-file", required=True)
    return p.parse_args(argv)


def _write_ready(path: str, ready: dict[str, object]) -> None:
    """Tell the CLI we serve: the file appears whole (a new 0600 file written aside, then renamed)."""
    from asyncray._session import write_private_file

    write_private_file(path, json.dumps(ready), tmp=path + ".tmp")  # the CLI removes this .tmp name if we fail


async def serve(args: argparse.Namespace) -> None:
    """Start the services, report readiness, wait for a stop signal, stop the services."""
    token = os.environ.get("ASYNCRAY_TOKEN", "")
    session_dir = new_session_dir(args.session_name)
    services: list[object] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.head:
            head = HeadService(
                f"{args.host}:{args.port}", token=token, node_timeout_s=args.node_timeout, storage=args.storage
            )
            services.append(head)  # before start: a start that fails half-way is still stopped
            await head.start()
            dashboard_url = None
            if args.include_dashboard:
                from asyncray.dashboard import start_dashboard

                dashboard = await start_dashboard(head, args.host, args.dashboard_port, token=head.token)
                services.append(dashboard)
                dashboard_url = dashboard.url
            ready: dict[str, object] = {
                "pid": os.getpid(), "head_address": head.address, "session_dir": session_dir,
                "storage": head.storage_url, "restored": head.restored, "dashboard_url": dashboard_url,
                "cluster_id": head.cluster_id,
            }
            done = [asyncio.ensure_future(stop.wait())]
        else:
            node = NodeService(
                NodeConfig(
                    node_id=_ids.new_id(),
                    address=f"{args.host}:0",
                    head_address=await locate_head(args.address),
                    head_lookup=args.head_lookup or (args.address if is_lookup(args.address) else ""),
                    resources=node_resources(
                        args.num_cpus, args.num_gpus, json.loads(args.resources), args.object_store_memory,
                        host=args.host,
                    ),
                    session_dir=session_dir,
                    store_dir=store_dir_for(args.session_name, args.object_store_dir),
                    spill_dir=spill_dir_for(args.session_name, args.object_spilling_dir),
                    num_workers=max(1, int(args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1))),
                    token=token,
                    listen_host=args.host,
                )
            )
            # Listed before it starts: the node makes its store directory when it is built, and
            # a node that then fails to start (head unreachable, bad token) must still remove it.
            services.append(node)
            await node.start()
            ready = {
                "pid": os.getpid(), "head_address": node.config.head_address, "node_id": node.node_id.hex(),
                "node_address": node.address, "session_dir": session_dir, "store_dir": node.config.store_dir,
                "spill_dir": node.config.spill_dir,
            }
            done = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.fenced.wait())]
        _write_ready(args.ready_file, ready)
        await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
        for waiter in done:
            waiter.cancel()
    finally:
        for service in reversed(services):
            await service.stop()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(args))
        else:
            uvloop.run(serve(args))
    except (OSError, ConnectionError, ValueError) as exc:  # say what went wrong in one line, not a traceback
        if args.head:
            log.error("cannot start the head at %s:%s: %s", args.host, args.port, exc)
        else:
            log.error(
                "cannot join the head at %s: %s (is the head running there, and is the token right?)",
                args.address, exc or type(exc).__name__,
            )
        sys.exit(1)


if __name__ == "__main__":
    main()
