"""The dashboard: an aiohttp application served by the head (SPEC 6, issue "Seeing the cluster").

Pages are plain HTML with a little vanilla JavaScript that polls the JSON API under
``/api/``; ``/metrics`` serves Prometheus text. Nothing is computed unless a page or a
scraper asks, except a tiny probe that measures the head's event-loop lag. There is no
agent process per node: what a node knows (its workers' CPU and memory, their logs) is
fetched from it over the head's existing connection, on request.
"""

from __future__ import annotations

import collections
import errno
import functools
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from asyncray._looplag import probe_loop_lag
from asyncray._service import Service
from asyncray.dashboard._app import build_app

if TYPE_CHECKING:
    from asyncray._head.service import HeadService

__all__ = ["DashboardService", "start_dashboard"]

log = logging.getLogger(__name__)

# If the asked-for port is taken, try this many after it.
PORT_TRIES = 20
LAG_PROBE_INTERVAL_S = 0.5
LAG_SAMPLES = 10


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardService(Service):
    """The dashboard's web server; ``url`` is where it listens once started."""

    name = "dashboard"

    def __init__(
        self, head: HeadService, host: str = "127.0.0.1", port: int = 8265, *, token: str = "",
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__()
        self.sock = sock
        self.head = head
        self.host = host
        self.port = port
        self.url = ""
        self.require_token = not is_loopback(host)
        # On loopback there is no token: a page from elsewhere that rebinds its own name to
        # 127.0.0.1 (DNS rebinding) would read everything, so such a request's Host is refused.
        self.check_host = not self.require_token
        if self.require_token and not token:
            raise ValueError(
                f"the dashboard binds to {host!r}, reachable from other machines, and so needs the cluster token; "
                "start the cluster with a token or bind the dashboard to 127.0.0.1"
            )
        self.token = token
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)
        self._runner: web.AppRunner | None = None

    @property
    def loop_lag_s(self) -> float:
        """The worst lag of the head's event loop over the last few probes, in seconds."""
        return max(self._lags, default=0.0)

    async def _start(self) -> None:
        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.sock is not None:
            await web.SockSite(self._runner, self.sock).start()
            self.url = f"http://{self.host}:{self.port}"
            self.supervise(functools.partial(probe_loop_lag, self._lags, LAG_PROBE_INTERVAL_S), "loop-lag-probe")
            return
        last_error: OSError | None = None
        ports = [self.port] if self.port == 0 else range(self.port, self.port + PORT_TRIES + 1)
        for port in ports:
            site = web.TCPSite(self._runner, self.host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    await self._runner.cleanup()
                    raise
                last_error = exc
                continue
            bound = self._bound_port(port)
            shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
            if ":" in shown:
                shown = f"[{shown}]"
            self.port = bound
            self.url = f"http://{shown}:{bound}"
            break
        else:
            await self._runner.cleanup()
            raise OSError(
                f"the dashboard could not bind to {self.host}:{self.port}..{self.port + PORT_TRIES}: {last_error}; "
                "pass another dashboard_port, or include_dashboard=False"
            )
        self.supervise(functools.partial(probe_loop_lag, self._lags, LAG_PROBE_INTERVAL_S), "loop-lag-probe")

    def _bound_port(self, asked: int) -> int:
        assert self._runner is not None
        for addr in self._runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        return asked

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_dashboard(
    head: HeadService, host: str = "127.0.0.1", port: int = 8265, *, token: str = "", sock: socket.socket | None = None
) -> DashboardService:
    """Serve the dashboard for ``head`` on ``host:port`` (or one of the next ports if taken).

    Args:
        head: the head service whose state is shown.
        host: address to bind; anything but a loopback address requires ``token`` on every request
            (``Authorization: Bearer <token>``, or ``?token=`` once, which sets a cookie).
        port: first port to try; 0 picks a free one.
        token: the cluster token.
        sock: an already bound listening socket to serve on (then ``port`` is its port).

    Returns:
        The running service; ``.url`` is its address, ``await .stop()`` ends it.

    Raises:
        OSError: no port in the range could be bound.
        ValueError: a non-loopback host without a token.
    """
    service = DashboardService(head, host, port, token=token, sock=sock)
    await service.start()
    return service


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for tests and tools)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
