"""Starting and stopping the runtime of a driver: the embedded cluster, the core, the portal.

``init()`` with no address starts a head service and a node service (with its worker pool)
inside the driver, on the core's loop. They are separate services with their own state
that talk through the same framed messages they would use across machines (SPEC 5).
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import importlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from asyncray import _ids, _session
from asyncray._client.core import Core, install
from asyncray._client.portal import Portal
from asyncray._head.service import HeadService
from asyncray._node.service import NodeConfig, NodeService
from asyncray._procs import pid_alive

log = logging.getLogger(__name__)


def _default_store_root() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _sweep_stale_sessions() -> None:
    """Remove session and store directories of embedded clusters whose driver died unclean.

    Only directories of this user's own: a path another user put where we look is never deleted.
    """
    patterns = [os.path.join(_default_store_root(), "asyncray-s*-*")]
    try:
        patterns.append(os.path.join(_session.ensure_sessions_dir(), "s*-*"))
    except OSError:
        pass  # not ours to sweep; new_session_dir() says why
    for pattern in patterns:
        for path in glob.glob(pattern):
            pid_text = os.path.basename(path).split("-")[-2].lstrip("s")
            if pid_text.isdigit() and not pid_alive(int(pid_text)) and _session.is_own_dir(path):
                shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow symlinks inside


# The dashboard of an embedded cluster starts this long after init() (see _start_dashboard_later).
DASHBOARD_DELAY_S = 2.0
DASHBOARD_PORT_TRIES = 20


def bind_port(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``port``, or the next free one after it."""
    last: OSError | None = None
    for candidate in range(port, port + DASHBOARD_PORT_TRIES + 1) if port else [0]:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, candidate))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise OSError(f"no free port for the dashboard in {host}:{port}..{port + DASHBOARD_PORT_TRIES}: {last}")


def new_session_dir(name: str) -> str:
    """A fresh directory for sockets and logs (also holds worker logs of an embedded node).

    Raises:
        PermissionError: the sessions directory, or a directory already there by this name, is not ours.
    """
    path = os.path.join(_session.ensure_sessions_dir(), name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not _session.is_own_dir(path):
            raise PermissionError(f"asyncray: {path} exists and is not a directory of yours") from None
    return path


def store_dir_for(session_name: str, root: str | None = None) -> str:
    """The shared-memory directory of a node started for ``session_name`` (under ``root``, default /dev/shm)."""
    return os.path.join(os.fspath(root) if root else _default_store_root(), f"asyncray-{session_name}")


def spill_dir_for(session_name: str, root: str | None) -> str:
    """The node's own spill directory under ``root``; empty for the default (in its session directory)."""
    return os.path.join(os.fspath(root), f"asyncray-{session_name}-spill") if root else ""


def node_resources(
    num_cpus: float | None, num_gpus: float | None, resources: dict[str, float] | None, object_store_memory: int | None,
    host: str = "127.0.0.1",
) -> dict[str, float]:
    """What a node offers: CPUs (default: all), GPUs, memory, object store, custom resources."""
    memory = _total_memory()
    total: dict[str, float] = {
        "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        "memory": float(int(memory * 0.7)),
        "object_store_memory": float(object_store_memory or int(memory * 0.3)),
        f"node:{host}": 1.0,
    }
    if num_gpus:
        total["GPU"] = float(num_gpus)
    total.update({k: float(v) for k, v in (resources or {}).items()})
    return total


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 1024**3


@dataclass
class RuntimeInfo:
    """What ``init()`` returns: where things are. Also readable like a dict, as in Ray."""

    address: str
    node_id: str
    session_dir: str
    dashboard_url: str | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)


class Runtime:
    """Everything one driver started: maybe an embedded cluster, always a core."""

    def __init__(self) -> None:
        self.portal: Portal | None = None
        self.core: Core | None = None
        self.head: HeadService | None = None
        self.node: NodeService | None = None
        self.dashboard: Any = None  # asyncray.dashboard.DashboardService when one is running
        self._dashboard_task: asyncio.Future[Any] | None = None
        self.session_dir = ""
        self.info: RuntimeInfo | None = None
        self.namespace = "default"

    async def start_embedded(
        self,
        *,
        num_cpus: float | None,
        num_gpus: float | None,
        resources: dict[str, float] | None,
        object_store_memory: int | None,
        namespace: str | None,
        log_to_driver: bool,
        include_dashboard: bool | None = None,
        dashboard_host: str = "127.0.0.1",
        dashboard_port: int = 8265,
        object_store_dir: str | None = None,
        object_spilling_dir: str | None = None,
    ) -> RuntimeInfo:
        """Start head, node and core on the running loop (and the dashboard unless turned off)."""
        _sweep_stale_sessions()
        total = node_resources(num_cpus, num_gpus, resources, object_store_memory)
        self.session_dir = new_session_dir(f"s{os.getpid()}-{secrets.token_hex(3)}")
        session_name = os.path.basename(self.session_dir)
        store_dir = store_dir_for(session_name, object_store_dir)
        node_id = _ids.new_id()
        self.namespace = namespace or "default"
        self.head = HeadService(f"unix:{self.session_dir}/head.sock")
        await self.head.start()
        dashboard_url = None
        if include_dashboard:  # asked for explicitly: start it now, and failing to is an error
            from asyncray.dashboard import start_dashboard

            self.dashboard = await start_dashboard(self.head, dashboard_host, dashboard_port, token=self.head.token)
            dashboard_url = self.dashboard.url
        elif include_dashboard is None:
            dashboard_url = self._start_dashboard_later(dashboard_host, dashboard_port)
        if dashboard_url:
            sys.stderr.write(f"asyncray: dashboard at {dashboard_url}\n")
        self.node = NodeService(
            NodeConfig(
                node_id=node_id,
                address=f"unix:{self.session_dir}/node.sock",
                head_address=self.head.address,
                resources=total,
                session_dir=self.session_dir,
                store_dir=store_dir,
                spill_dir=spill_dir_for(session_name, object_spilling_dir),
                num_workers=max(1, int(total["CPU"])),
                worker_path=_worker_path(),
            )
        )
        await self.node.start()
        self.core = Core(
            role="driver", node_address=self.node.address, head_address=self.head.address,
            session_dir=self.session_dir, store_dir=store_dir, node_id=node_id, log_to_driver=log_to_driver,
            namespace=self.namespace, spill_dir=self.node.config.spill_dir,
        )
        await self.core.start()
        install(self.core)
        self.info = RuntimeInfo(
            address=self.head.address, node_id=node_id.hex(), session_dir=self.session_dir, dashboard_url=dashboard_url
        )
        return self.info

    async def connect(self, address: str, *, token: str | None, namespace: str | None, log_to_driver: bool) -> RuntimeInfo:
        """Join a running cluster as a driver; its node on this machine runs our tasks (SPEC 2)."""
        from asyncray import _session
        from asyncray._head.locate import is_lookup, locate_head
        from asyncray._wire import messages as m
        from asyncray._wire.connection import connect as wire_connect

        head_address = await locate_head(address)
        lookup = address if is_lookup(address) else ""  # where to find the head again if it restarts
        token = _session.resolve_token(token)
        probe = await wire_connect(head_address, None, role="driver", token=token, name="driver->head")
        try:
            state = await asyncio.wait_for(probe.request(m.GetClusterState(rid=0)), 10)
        except (TimeoutError, ConnectionError) as exc:
            raise ConnectionError(
                f"the head at {head_address} did not answer; is the cluster running and the token right? ({exc})"
            ) from None
        finally:
            probe.close()
        host = os.uname().nodename
        nodes: list[m.NodeView] = state.nodes
        local = [n for n in nodes if n.alive and n.info.get("hostname") == host]
        if not local:
            raise ConnectionError(
                f"no live node of the cluster at {head_address} runs on this machine ({host}); "
                "start one with 'asyncray start --address ...'"
            )
        node = local[0]
        self.namespace = namespace or "default"
        self.session_dir = new_session_dir(f"s{os.getpid()}-{secrets.token_hex(3)}")
        listen_host = head_address.rpartition(":")[0] if not head_address.startswith("unix:") else ""
        self.core = Core(
            role="driver", node_address=node.address, head_address=head_address,
            session_dir=self.session_dir, store_dir=node.info["store_dir"], node_id=node.node_id,
            token=token, log_to_driver=log_to_driver, listen_host=listen_host, namespace=self.namespace,
            spill_dir=node.info.get("spill_dir", ""), head_lookup=lookup,
        )
        await self.core.start()
        install(self.core)
        self.info = RuntimeInfo(address=head_address, node_id=node.node_id.hex(), session_dir=self.session_dir)
        return self.info

    def _start_dashboard_later(self, host: str, port: int) -> str | None:
        """Bind the dashboard's port now, serve it a moment later.

        Importing aiohttp costs about a quarter of a second; done in a thread after the
        first tasks had their chance, it never delays ``init()`` or the first task.
        """
        try:
            sock = bind_port(host, port)
        except OSError as exc:
            log.warning("asyncray: no dashboard: %s", exc)
            return None
        bound = sock.getsockname()[1]

        async def serve() -> None:
            try:
                await asyncio.sleep(DASHBOARD_DELAY_S)
                loop = asyncio.get_running_loop()
                module = await loop.run_in_executor(None, importlib.import_module, "asyncray.dashboard")
                assert self.head is not None
                self.dashboard = await module.start_dashboard(self.head, host, bound, token=self.head.token, sock=sock)
            except asyncio.CancelledError:
                sock.close()
                raise
            except Exception as exc:
                sock.close()
                log.warning("asyncray: the dashboard did not start: %s", exc)

        assert self.head is not None
        self._dashboard_task = self.head.spawn(serve(), "start-dashboard")  # the head owns its dashboard
        self._dashboard_task.add_done_callback(lambda f: sock.close() if f.cancelled() else None)
        return f"http://{host}:{bound}"

    async def stop(self) -> None:
        """Stop the core, then the node (ending its workers), then the head."""
        install(None)
        try:
            if self._dashboard_task is not None:
                self._dashboard_task.cancel()
                await asyncio.gather(self._dashboard_task, return_exceptions=True)
            if self.dashboard is not None:
                await self.dashboard.stop()
            if self.core is not None:
                await self.core.stop()
            if self.node is not None:
                await self.node.stop()
            if self.head is not None:
                await self.head.stop()
        finally:
            if self.session_dir and not os.environ.get("ASYNCRAY_KEEP_SESSION"):
                shutil.rmtree(self.session_dir, ignore_errors=True)


def _worker_path() -> list[str]:
    """What workers put on sys.path: the driver's cwd and its sys.path (SPEC: import what the driver can)."""
    paths = [os.getcwd()]
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file:
        paths.append(os.path.dirname(os.path.abspath(main_file)))
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


# ---------------------------------------------------------------- the process's runtime
_current: Runtime | None = None


def current() -> Runtime | None:
    """The driver runtime started by init(), if any."""
    return _current


def set_current(rt: Runtime | None) -> None:
    """Record (or clear) the driver runtime."""
    global _current
    _current = rt


async def start(rt: Runtime, address: str | None, opts: dict[str, Any]) -> RuntimeInfo:
    """Embedded cluster when there is no address, else join the cluster at ``address``."""
    # As Ray: one OpenMP thread per task unless the user chose (a task gets one CPU; numpy's
    # default of a thread per core would oversubscribe the machine N times over).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if address is None:
        return await rt.start_embedded(
            **{k: opts[k] for k in (
                "num_cpus", "num_gpus", "resources", "object_store_memory", "namespace", "log_to_driver",
                "include_dashboard", "dashboard_host", "dashboard_port", "object_store_dir", "object_spilling_dir",
            )}
        )
    for name in ("object_store_dir", "object_spilling_dir"):
        if opts.get(name):
            raise ValueError(
                f"init({name}=...) applies to a cluster this process starts; the cluster at {address} has its own"
                f" (set it with 'asyncray start --{name.replace('_', '-')} DIR')"
            )
    return await rt.connect(address, token=opts["token"], namespace=opts["namespace"], log_to_driver=opts["log_to_driver"])


def start_blocking(address: str | None, opts: dict[str, Any]) -> Runtime:
    """Start a runtime on a fresh portal thread (the sync facade's ``init``)."""
    rt = Runtime()
    rt.portal = Portal()
    t0 = time.perf_counter()
    try:
        rt.portal.call(start(rt, address, opts))
    except BaseException:
        try:
            rt.portal.call(rt.stop(), timeout=10)
        finally:
            rt.portal.stop()
        raise
    log.debug("runtime started in %.3f s", time.perf_counter() - t0)
    set_current(rt)
    return rt


def stop_blocking() -> None:
    """Stop the current runtime from a thread that is not its loop thread."""
    rt = _current
    if rt is None:
        return
    set_current(None)
    if rt.portal is not None:
        try:
            rt.portal.call(rt.stop(), timeout=30)
        finally:
            rt.portal.stop()
    elif rt.core is not None:
        loop = rt.core.loop
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(rt.stop(), loop).result(30)


@atexit.register
def _stop_at_exit() -> None:
    rt = _current
    if rt is None:
        return
    try:
        if rt.portal is not None:
            stop_blocking()
    except Exception:  # best effort at interpreter exit
        pass
