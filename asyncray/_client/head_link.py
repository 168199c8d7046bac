"""A process's connection to the head, kept up across head restarts.

The head may die and come back (on the same storage: "head fault tolerance"). Running tasks
do not need it, so losing it stops nothing by itself; this link reconnects with backoff in
the background, says hello again (``on_connect``), and makes requests that need the head
wait for it, up to ``head_reconnect_timeout_s()`` after it went away, then fail with an
error that names the head and says what to do. A request cut off by the head's death is
asked again of the next head: every request kind sent through here is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from asyncray._head.locate import locate_head
from asyncray._wire import messages as m
from asyncray._wire.connection import (
    HEAD_KEEPALIVE_S,
    Connection,
    ConnectionLost,
    Handler,
    RemoteCallError,
    connect,
    head_reconnect_timeout_s,
    head_timeout_s,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
GAVE_UP_RETRY_S = 5.0  # after the deadline: still reconnect, at this pace


class HeadLink:
    """The connection to the head, reconnected when it drops (``spec``: an address, ``auto``
    or a storage URL to look the address up in again)."""

    def __init__(
        self, address: str, *, lookup: str = "", role: str, token: str, peer_id: bytes, handler: Handler,
        on_connect: Callable[[Connection], None], spawn: Callable[[Any, str], Any],
    ) -> None:
        self.address = address
        self.lookup = lookup
        self.conn: Connection | None = None
        self._role, self._token, self._peer_id, self._handler = role, token, peer_id, handler
        self._on_connect = on_connect
        self._spawn = spawn
        self._up = asyncio.Event()
        self._down_since = 0.0
        self._gave_up = False
        self.closed = False

    @property
    def is_up(self) -> bool:
        """True while connected to a head."""
        return self.conn is not None and self.conn.is_open

    async def open(self) -> None:
        """Connect and see the head answer (the first time: a failure is the caller's to report).

        A TCP connect alone proves little: a frozen head's kernel still accepts, and a head
        with another token closes at once. Only a head that answers counts as back.
        """
        conn = await connect(
            self.address, self._handler, role=self._role, token=self._token, peer_id=self._peer_id,
            name=f"{self._role}->head at {self.address}", on_close=self._closed, timeout=CONNECT_TIMEOUT_S,
        )
        try:
            await asyncio.wait_for(conn.request(m.GetClusterState(rid=0)), CONNECT_TIMEOUT_S)
        except BaseException:
            conn.abort()
            raise
        if not conn.is_open:
            raise ConnectionLost(f"the head at {self.address} closed the connection at once")
        conn.keep_alive(HEAD_KEEPALIVE_S, head_timeout_s())
        self.conn = conn
        self._gave_up = False
        self._on_connect(conn)
        self._up.set()

    def close(self) -> None:
        """Stop reconnecting and close the connection."""
        self.closed = True
        self._up.set()  # whoever waits wakes up and sees the link closed
        if self.conn is not None:
            self.conn.close()

    def _closed(self, conn: Connection) -> None:
        if conn is not self.conn or self.closed:
            return
        self._up.clear()
        self._down_since = time.monotonic()
        log.warning(
            "%s lost the head at %s; running tasks go on, and what needs the head waits up to %g s for it"
            " to come back", self._role, self.address, head_reconnect_timeout_s(),
        )
        self._spawn(self._reconnect(), "reconnect-head")

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST_S
        give_up = self._down_since + head_reconnect_timeout_s()
        while not self.closed:
            try:
                self.address = await locate_head(self.lookup or self.address)
                await self.open()
            except (OSError, TimeoutError, ConnectionLost, RemoteCallError) as exc:
                if time.monotonic() > give_up and not self._gave_up:
                    # What waits fails now; we keep looking, slowly, for a head started later.
                    log.error("%s gave up waiting for the head at %s: %s", self._role, self.address, exc)
                    self._gave_up = True
                    self._up.set()
                await asyncio.sleep(GAVE_UP_RETRY_S if self._gave_up else delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            log.warning("%s reconnected to the head at %s", self._role, self.address)
            return

    def send(self, msg: m.Message) -> bool:
        """Send when connected; False (nothing sent) while the head is away."""
        if self.conn is not None and self.conn.is_open:
            self.conn.send(msg)
            return True
        return False

    def gone_error(self) -> ConnectionLost:
        """The error for what needs a head that is not coming back (in time)."""
        return ConnectionLost(
            f"the head at {self.address} is gone (crashed, stopped or silent for {head_timeout_s():g} s) and did"
            f" not come back within {head_reconnect_timeout_s():g} s: creating actors, finding them by name and"
            " placing work on other nodes need it; tasks already running go on. Check it with 'asyncray status';"
            " restart it with 'asyncray start --head' on the same storage to keep the cluster (this process"
            " reconnects to it)."
        )

    async def request(self, msg: m.Message) -> Any:
        """Ask the head, waiting (bounded) for it while it is away; asked again if it dies meanwhile."""
        deadline: float | None = None  # set at the first sign the head is away
        while True:
            conn = self.conn
            if conn is not None and conn.is_open:
                try:
                    return await conn.request(msg)
                except ConnectionLost:
                    if self.closed or conn.is_open:
                        raise
                    # The head went away with our question: the next one gets it.
            if self.closed:
                raise ConnectionLost(f"the connection to the head at {self.address} was closed")
            if deadline is None:
                deadline = (self._down_since or time.monotonic()) + head_reconnect_timeout_s()
            remaining = deadline - time.monotonic()
            if self._gave_up or remaining <= 0:
                raise self.gone_error()
            if not self.is_up:
                try:
                    await asyncio.wait_for(self._up.wait(), remaining)
                except TimeoutError:
                    raise self.gone_error() from None
