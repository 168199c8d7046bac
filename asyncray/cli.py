"""The ``asyncray`` command: start and stop a cluster on this machine, and look at it.

    asyncray start --head [--port 6379] [--num-cpus N] [--resources JSON] ...
    asyncray start --address HOST:PORT [...]
    asyncray status [--address A]
    asyncray stop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from asyncray import _session
from asyncray._procs import pid_alive

READY_TIMEOUT_S = 30.0


def _print(*args: Any) -> None:
    print(*args)  # noqa: T201 - this module talks to a terminal


# ---------------------------------------------------------------- start
def cmd_start(args: argparse.Namespace) -> int:
    """Launch a head (with a node) or a node, in the background."""
    if not args.head and not args.address:
        _print("asyncray start: give --head to start a cluster, or --address HOST:PORT to join one")
        return 2
    try:
        json.loads(args.resources)
    except ValueError as exc:
        _print(f"asyncray start: --resources must be JSON, e.g. '{{\"GPU_X\": 1}}' ({exc})")
        return 2
    from asyncray._client.api import check_directory

    try:
        check_directory("--object-store-dir", args.object_store_dir)
        check_directory("--object-spilling-dir", args.object_spilling_dir)
    except ValueError as exc:
        _print(f"asyncray start: {exc}")
        return 2
    if args.head:
        return _start_head(args)
    token = _session.resolve_token(args.token)
    from asyncray._head.locate import is_lookup

    extra = ["--head-lookup", args.address] if is_lookup(args.address) else []
    ready = _launch("node", args, ["--address", args.address, *extra], token)
    if ready is None:
        return 1
    _print(f"Started an asyncray node {ready['node_id'][:8]} (pid {ready['pid']}) joined to {ready['head_address']}.")
    return 0


def _start_head(args: argparse.Namespace) -> int:
    """Start the head process, and this machine's node beside it; or restart a head that died,
    on the storage it left, with the same token (its nodes rejoin it)."""
    info = _session.read_cluster() or {}
    processes = info.get("processes", [])
    if any(p["role"] == "head" and pid_alive(p["pid"]) for p in processes):
        _print(f"asyncray start: a cluster started here is still running ({info.get('address')}); run 'asyncray stop' first")
        return 1
    previous = info.get("storage", "")
    restart = bool(previous) and not previous.startswith("memory:")
    if restart:
        token = args.token or os.environ.get("ASYNCRAY_TOKEN") or _session.resolve_token()
        storage = args.storage or previous
        port = args.port if args.port is not None else int(str(info.get("address") or ":6379").rpartition(":")[2])
        # Processes that are gone leave only their directories, removed by 'stop'.
        gone = [p for p in processes if not pid_alive(p["pid"])]
        live = [p for p in processes if pid_alive(p["pid"])]

        def forget_dead(info: dict[str, Any]) -> None:
            info["processes"] = live
            info["leftovers"] = info.get("leftovers", []) + [p.get("session_dir") for p in gone if p.get("session_dir")]

        _session.update_cluster(forget_dead)
    else:
        token = args.token or os.environ.get("ASYNCRAY_TOKEN") or _session.new_token()
        port = args.port if args.port is not None else 6379
        name = f"head-{os.getpid()}-{secrets.token_hex(3)}"
        storage = args.storage or os.environ.get("ASYNCRAY_STORAGE") or (
            "sqlite://" + os.path.join(_session.SESSIONS_DIR, name, "head.db")
        )
        _session.write_token(token)
        _session.write_cluster({"address": None, "processes": [], "storage": storage})
        live = []
    head_args = ["--head", "--port", str(port), "--dashboard-port", str(args.dashboard_port), "--storage", storage]
    if args.include_dashboard:
        head_args.append("--include-dashboard")
    ready = _launch("head", args, head_args, token, name=None if restart else name)
    if ready is None:
        if not restart:  # the cluster this start recorded never came up
            _remove_cluster_files()
        return 1
    addr = ready["head_address"]
    _session.update_cluster(lambda info: info.update(
        address=addr, dashboard_url=ready.get("dashboard_url"), storage=storage, cluster_id=ready.get("cluster_id"),
    ))
    if not any(p["role"] == "node" and p.get("head_machine") for p in live):
        lookup = storage if storage.startswith(("redis", "rediss")) else "auto"
        node = _launch("node", args, ["--address", addr, "--head-lookup", lookup], token, head_machine=True)
        if node is None:
            return 1
    if restart:
        _print(f"Restarted the asyncray head at {addr} (pid {ready['pid']}) on {storage}"
               f"{'; the cluster was restored' if ready.get('restored') else ''}.")
        return 0
    _print(f"Started an asyncray head at {addr} (pid {ready['pid']}; its state in {storage}).")
    if ready.get("dashboard_url"):
        _print(f"  Dashboard:           {ready['dashboard_url']}")
    _print("  Connect from Python: asyncray.init(address='auto')   or   ASYNCRAY_ADDRESS=" + addr)
    _print(f"  Add a node:          asyncray start --address {addr}")
    _print(f"  Cluster token:       {_session.TOKEN_FILE} (0600; or pass --token / ASYNCRAY_TOKEN)")
    _print("  Stop everything:     asyncray stop")
    return 0


def _launch(
    role: str, args: argparse.Namespace, role_args: list[str], token: str, *, name: str | None = None,
    head_machine: bool = False,
) -> dict[str, Any] | None:
    """Start one daemon in the background, wait until it serves, record it; its ready info or None."""
    name = name or f"{role}-{os.getpid()}-{secrets.token_hex(3)}"
    _session.ensure_sessions_dir()
    ready_file = os.path.join(_session.SESSIONS_DIR, f"{name}.ready")
    log_dir = os.path.join(_session.SESSIONS_DIR, name, "logs")
    os.makedirs(log_dir, exist_ok=True)
    cmd = [
        sys.executable, "-m", "asyncray._daemon", "--host", args.host, "--session-name", name,
        "--ready-file", ready_file, "--resources", args.resources, "--node-timeout", str(args.node_timeout),
        *role_args,
    ]
    if role == "node":
        for flag, value in (("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus),
                            ("--object-store-memory", args.object_store_memory),
                            ("--object-store-dir", args.object_store_dir),
                            ("--object-spilling-dir", args.object_spilling_dir)):
            if value is not None:
                cmd += [flag, str(value)]
    env = dict(os.environ, ASYNCRAY_TOKEN=token)
    with open(os.path.join(log_dir, "daemon.log"), "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not os.path.exists(ready_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with open(os.path.join(log_dir, "daemon.log"), errors="replace") as f:
                tail = f.read()[-2000:]
            _print(f"asyncray start: the {role} did not start:\n{tail}")
            _remove_leftovers(name, ready_file, args)
            return None
        time.sleep(0.05)
    ready: dict[str, Any] = json.loads(_session.read_private_file(ready_file) or "{}")
    os.unlink(ready_file)
    extra = {k: ready[k] for k in ("session_dir", "store_dir", "spill_dir") if ready.get(k)}
    if head_machine:
        extra["head_machine"] = True
    _session.add_process(proc.pid, role, extra)
    return ready


def _remove_leftovers(name: str, ready_file: str, args: argparse.Namespace) -> None:
    """What a daemon that failed to start may have left: its store, session dir and ready file."""
    from asyncray._client.runtime import spill_dir_for, store_dir_for

    store = store_dir_for(name, args.object_store_dir)
    spill = spill_dir_for(name, args.object_spilling_dir) or store + "-spill"
    for path in (store, spill, os.path.join(_session.SESSIONS_DIR, name)):
        shutil.rmtree(path, ignore_errors=True)
    for path in (ready_file, ready_file + ".tmp"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _descendants(pids: list[int]) -> list[Any]:
    """Every live descendant (workers) of the given daemons, as psutil handles."""
    import psutil

    out = []
    for pid in pids:
        try:
            out += psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            pass
    return out


def _end_leftovers(procs: list[Any], grace: float = 3.0) -> int:
    """Give workers whose daemon is gone a moment to exit on their own, then SIGKILL them."""
    import psutil

    def running(p: Any) -> bool:
        try:
            return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(running(p) for p in procs):
        time.sleep(0.05)
    killed = 0
    for p in procs:
        if running(p):  # is_running() also checks the pid was not reused
            try:
                p.kill()
                killed += 1
            except psutil.Error:
                pass
    return killed


def _remove_cluster_files() -> None:
    for path in (_session.CLUSTER_FILE, _session.TOKEN_FILE):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- stop
def cmd_stop(args: argparse.Namespace) -> int:
    """Stop every process ``start`` launched on this machine and remove what they left."""
    info = _session.read_cluster()
    if not info or not info.get("processes"):
        _remove_cluster_files()  # a head whose start failed may have left them
        _print("asyncray stop: nothing started here is running")
        return 0
    # Nodes first (newest first), the head last: nodes that lose the head stop rejoining it.
    procs = list(reversed(info["processes"]))
    procs.sort(key=lambda p: p["role"] == "head")
    # Workers lead sessions of their own (so a daemon's process group does not hold them):
    # remember them now, to end any that outlive their daemon.
    children = _descendants([p["pid"] for p in procs])
    for p in procs:
        if pid_alive(p["pid"]):
            try:
                os.kill(p["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline and any(pid_alive(p["pid"]) for p in procs):
        time.sleep(0.05)
    killed = 0
    for p in procs:
        if pid_alive(p["pid"]):
            os.killpg(p["pid"], signal.SIGKILL)  # the daemon leads its own session
            killed += 1
    killed += _end_leftovers(children)
    leftovers = [p.get(k) for p in procs for k in ("store_dir", "spill_dir", "session_dir")]
    leftovers += info.get("leftovers", [])  # of heads that died and were started again
    for path in leftovers:
        if path and _session.is_own_dir(path):  # never delete what is not ours, whatever the file says
            shutil.rmtree(path, ignore_errors=True)
    _forget_storage(info.get("storage", ""))
    _remove_cluster_files()
    _print(f"Stopped {len(procs)} asyncray process(es)" + (f" ({killed} had to be killed)." if killed else "."))
    return 0


def _forget_storage(url: str) -> None:
    """A stopped cluster leaves no state in a shared Redis (a file storage went with its directory)."""
    if not url.startswith(("redis://", "rediss://")):
        return
    from asyncray._head.storage import open_storage

    async def clear() -> None:
        storage = await open_storage(url)
        try:
            await storage.clear()
        finally:
            await storage.close()

    try:
        asyncio.run(clear())
    except (OSError, ConnectionError) as exc:
        _print(f"asyncray stop: could not clear the cluster's state in {url}: {exc}")


# ---------------------------------------------------------------- status
async def _cluster_state(spec: str, token: str) -> tuple[str, list[dict[str, Any]]]:
    from asyncray._head.locate import locate_head
    from asyncray._wire import messages as m
    from asyncray._wire.connection import connect

    address = await locate_head(spec)
    conn = await asyncio.wait_for(connect(address, None, role="cli", token=token, name="cli->head"), 10)
    try:
        state = await asyncio.wait_for(conn.request(m.GetClusterState(rid=0)), 10)
    finally:
        conn.close()
    return address, [n.to_wire() for n in state.nodes]


def _fmt_amount(name: str, v: float) -> str:
    if "memory" in name:
        return f"{v / 2**30:.1f}GiB"
    return f"{v:g}"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the nodes with their resources and current use."""
    try:
        spec = args.address or os.environ.get("ASYNCRAY_ADDRESS") or "auto"
        address, nodes = asyncio.run(_cluster_state(spec, _session.resolve_token(args.token)))
    except (OSError, TimeoutError) as exc:
        _print(f"asyncray status: cannot reach the cluster: {exc} (is it running, and is the token right?)")
        return 1
    alive = [n for n in nodes if n["alive"]]
    _print(f"Cluster at {address}: {len(alive)} node(s) alive, {len(nodes) - len(alive)} dead")
    for n in nodes:
        state = "ALIVE" if n["alive"] else "DEAD "
        _print(f"  node {n['node_id'].hex()[:8]}  {state}  {n['address']}  (host {n['info'].get('hostname', '?')})")
        for k in sorted(n["resources"]):
            if k.startswith("node:"):
                continue
            total, free = n["resources"][k], n["available"].get(k, 0.0)
            _print(f"      {k:<22} {_fmt_amount(k, total - free):>10} used / {_fmt_amount(k, total)} total")
    return 0


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(prog="asyncray", description="Run and inspect asyncray clusters.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a head (--head) or join a node (--address) in the background")
    s.add_argument("--head", action="store_true",
                   help="start a cluster (a head and a node), or restart its head on the storage it left")
    s.add_argument("--address", help="join the cluster whose head is at HOST:PORT (or 'auto', or its redis:// storage)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=None, help="head port (default 6379, or the port of the head restarted)")
    s.add_argument("--storage", default=None,
                   help="where the head keeps its state: sqlite:///PATH (default: in its session directory) or"
                   " redis://HOST:PORT/DB (pip install 'asyncray[redis]'); also ASYNCRAY_STORAGE")
    s.add_argument("--num-cpus", type=float)
    s.add_argument("--num-gpus", type=float)
    s.add_argument("--resources", default="{}", help='custom resources as JSON, e.g. \'{"disk": 1}\'')
    s.add_argument("--object-store-memory", type=int, help="bytes for the node's object store")
    s.add_argument("--object-store-dir", "--plasma-directory", metavar="DIR",
                   help="directory for the node's shared-memory objects (default /dev/shm)")
    s.add_argument("--object-spilling-dir", "--object-spilling-directory", metavar="DIR",
                   help="directory objects spill to when the store is full (default: the node's session directory)")
    s.add_argument("--dashboard-port", type=int, default=8265)
    s.add_argument("--include-dashboard", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--node-timeout", type=float, default=5.0, help="seconds without heartbeat before a node is dead")
    s.add_argument("--token", help="cluster token (default: generated, or ASYNCRAY_TOKEN)")
    s.set_defaults(func=cmd_start)
    st = sub.add_parser("stop", help="stop what 'start' started on this machine")
    st.add_argument("--grace", type=float, default=10.0, help="seconds to wait before killing")
    st.set_defaults(func=cmd_stop)
    ss = sub.add_parser("status", help="nodes, resources and usage")
    ss.add_argument("--address")
    ss.add_argument("--token")
    ss.set_defaults(func=cmd_status)
    from asyncray import _cli_state

    _cli_state.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PermissionError as exc:  # an unsafe sessions directory or cluster file: say which, no traceback
        _print(f"asyncray {args.command}: {exc}")
        return 1
    except BrokenPipeError:  # e.g. `asyncray status | head -1`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
