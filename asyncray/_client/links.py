"""What the parts of the client core may ask of the core that owns them.

The core (``core.py``) holds the process's connections and its event loop; its parts (the
object table, the task submitter, the actor client, the reporter) each own their own state
and reach the outside world only through this narrow interface, given at construction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from asyncray._wire import messages as m
from asyncray._wire.connection import Connection

T = TypeVar("T")


class CoreLinks(Protocol):
    """The process's identity, its loop, and its connections to node, head and peers."""

    @property
    def address(self) -> str:
        """Where peers reach this process (its listening address)."""

    @property
    def role(self) -> str:
        """``driver`` or ``worker``."""

    @property
    def worker_id(self) -> bytes:
        """This process's id."""

    @property
    def job_id(self) -> bytes:
        """This process's own job (a driver's; a worker runs tasks of the jobs that sent them)."""

    @property
    def node_id(self) -> bytes:
        """The node this process runs on."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop that owns every state change of the core."""

    @property
    def closed(self) -> bool:
        """True once the core is stopping: nothing new starts."""

    def on_loop_thread(self) -> bool:
        """True when called from the thread that runs ``loop``."""

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the core's loop, from any thread."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Future[Any]:
        """Run a coroutine in the core's task group (cancelled when it stops; a failure is logged)."""

    def run_coroutine(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the core's loop from another thread; a future for that thread."""

    def node_connection(self) -> Connection:
        """The connection to this process's node (raises ConnectionLost when it is down)."""

    def send_node(self, msg: m.Message) -> bool:
        """Send to this process's node; False when that connection is down."""

    def send_head(self, msg: m.Message) -> bool:
        """Send to the head; False when that connection is down."""

    def request_node(self, msg: m.Message) -> asyncio.Future[Any]:
        """A request to this process's node; the future holds the reply."""

    def request_head(self, msg: m.Message) -> asyncio.Future[Any]:
        """A request to the head; the future holds the reply."""

    def route_to(self, address: str) -> Connection | None:
        """An open connection to the process listening at ``address``, if there is one."""

    async def peer(self, address: str) -> Connection:
        """A connection to the process listening at ``address`` (opened when needed)."""
