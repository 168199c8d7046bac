"""The only module that touches sockets: a framed, request/reply-capable connection.

Built on ``asyncio.Protocol`` rather than streams: one ``data_received`` call may complete
many frames, and frames sent in one loop iteration are coalesced into a single write
(PERF-NOTES: one frame per syscall is the slow way).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from asyncray._wire.codec import FrameDecoder, encode
from asyncray._wire.messages import Convert, Hello, Message, Payload, Ping, ProtocolError, Reply

log = logging.getLogger(__name__)

# Bytes queued for a peer that does not read them: past this, it is taken for stuck and dropped
# (memory never grows without a limit). Log forwarding gives up far earlier (``is_backed_up``).
MAX_UNSENT_BYTES = 512 * 1024 * 1024
BACKED_UP_BYTES = 8 * 1024 * 1024

# Keepalive on connections to the head (drivers, workers, nodes): a ping when idle this long,
# and the head is taken for gone after this much silence (a frozen head keeps its socket open).
HEAD_KEEPALIVE_S = 1.0
DEFAULT_HEAD_TIMEOUT_S = 10.0


def head_timeout_s() -> float:
    """How long the head may stay silent before it is taken for gone (``ASYNCRAY_HEAD_TIMEOUT_S``)."""
    return float(os.environ.get("ASYNCRAY_HEAD_TIMEOUT_S", DEFAULT_HEAD_TIMEOUT_S))


# Keepalive on connections a process opens to its peers (workers it leases, actors it calls,
# owners it borrows from). Generous: a busy worker answers from its loop thread, but C code
# that holds the GIL for long could delay it.
PEER_KEEPALIVE_S = 1.0
# Opening a connection: past this, the peer is taken for unreachable.
CONNECT_TIMEOUT_S = 10.0
# On connections a process accepted (from drivers, workers, nodes): a slower ping, same silence limit.
ACCEPTED_KEEPALIVE_S = 5.0
DEFAULT_PEER_TIMEOUT_S = 30.0


def head_reconnect_timeout_s() -> float:
    """How long nodes and drivers keep trying to reach a head that went away before giving up
    on it (``ASYNCRAY_HEAD_RECONNECT_TIMEOUT_S``, default 60 s as Ray's): what needs the head
    waits this long for it to come back, then fails."""
    return float(os.environ.get("ASYNCRAY_HEAD_RECONNECT_TIMEOUT_S", "60"))


def peer_timeout_s() -> float:
    """How long a peer may stay silent before it is taken for gone (``ASYNCRAY_PEER_TIMEOUT_S``)."""
    return float(os.environ.get("ASYNCRAY_PEER_TIMEOUT_S", DEFAULT_PEER_TIMEOUT_S))

# Before a peer proves it has the cluster token it may send one small frame, in this time.
MAX_HELLO_BYTES = 64 * 1024
HELLO_TIMEOUT_S = 10.0

Handler = Callable[["Connection", Message], None]


class ConnectionLost(ConnectionError):
    """The peer went away while a request was outstanding."""


class RemoteCallError(Exception):
    """The peer answered a request with an error message."""


class Connection(asyncio.Protocol):
    """One framed connection. ``handler`` sees every non-reply message, in order."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        name: str = "",
        token: str = "",
        expect_hello: bool = False,
        on_close: Callable[[Connection], None] | None = None,
        ping_accepted: bool = True,
    ) -> None:
        self.handler = handler
        self._ping_accepted = ping_accepted
        self.name = name
        self.on_close = on_close
        self.peer: Hello | None = None
        self.state: dict[str, Any] = {}  # per-connection scratch owned by the service
        self._token = token
        self._expect_hello = expect_hello
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._pending: dict[int, tuple[asyncio.Future[Any], Convert | None]] = {}
        self._rids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._keepalive_s = 0.0
        self._last_heard = self._loop.time()
        self.max_unsent_bytes = MAX_UNSENT_BYTES

    def keep_alive(self, interval_s: float, silence_s: float) -> None:
        """Ping the peer when idle for ``interval_s``; abort when it says nothing for ``silence_s``.

        Liveness does not rest on a TCP close alone (SPEC 7): a frozen (SIGSTOPped) peer
        keeps its socket open forever. The peer answers pings whatever its own settings.
        """
        self._keepalive_s, self._silence_s = interval_s, silence_s
        self._last_heard = self._loop.time()
        self._loop.call_later(interval_s, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        if self._transport is None:
            return
        silent = self._loop.time() - self._last_heard
        if silent > self._silence_s:
            log.warning("%s: the peer said nothing for %.1f s; closing the connection", self.name, silent)
            self.abort()
            return
        if silent >= self._keepalive_s:  # quiet for a while: ask for a sign of life
            self.send(Ping(answer=True))
        self._loop.call_later(self._keepalive_s, self._keepalive_tick)

    # ------------------------------------------------------------ protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._expect_hello:
            self._loop.call_later(HELLO_TIMEOUT_S, self._hello_deadline)

    def _hello_deadline(self) -> None:
        if self._expect_hello and self._transport is not None:
            log.warning("connection %s sent no Hello within %g s; closing it", self.name, HELLO_TIMEOUT_S)
            self.abort()

    def data_received(self, data: bytes) -> None:
        self._last_heard = self._loop.time()
        try:
            if self._expect_hello:
                # Nothing but one small Hello is decoded before the token is checked.
                first = self._decoder.feed(data, max_messages=1, max_frame_bytes=MAX_HELLO_BYTES)
                if not first:
                    return
                hello = first[0]
                if not (
                    isinstance(hello, Hello) and isinstance(hello.token, str)
                    and hmac.compare_digest(hello.token.encode(), self._token.encode())
                ):
                    log.warning("connection %s refused: missing or wrong cluster token", self.name)
                    self.abort()
                    return
                self._expect_hello = False
                self.peer = hello
                if self._ping_accepted and not self._keepalive_s and hello.role != "cli":
                    # The side that accepted checks its peer too: a frozen driver or worker must
                    # not hold leases and objects forever because it never closes its socket.
                    self.keep_alive(ACCEPTED_KEEPALIVE_S, peer_timeout_s())
                data = b""
            msgs = self._decoder.feed(data)
        except ProtocolError as exc:
            log.warning("protocol error on %s, closing it: %s", self.name or "connection", exc)
            self.abort()
            return
        for msg in msgs:
            if type(msg) is Ping:
                if msg.answer and self._transport is not None:
                    self.send(Ping(answer=False))
                continue
            if type(msg) is Reply:
                pending = self._pending.pop(msg.rid, None)
                if pending is None:
                    continue
                fut, typed = pending
                if fut.done():
                    continue
                if msg.error is not None:
                    fut.set_exception(RemoteCallError(msg.error))
                    continue
                try:
                    fut.set_result(typed(msg.value) if typed is not None else msg.value)
                except ProtocolError as exc:  # a reply of the wrong shape: this peer is not to be trusted
                    log.warning("protocol error on %s, closing it: %s", self.name or "connection", exc)
                    fut.set_exception(exc)
                    self.abort()
                    return
                continue
            if self.handler is None:
                continue
            try:
                self.handler(self, msg)
            except Exception as exc:
                log.exception("handler failed on %s for %s", self.name, type(msg).__name__)
                rid = getattr(msg, "rid", 0)
                if rid:  # the asker is alive and would wait forever for an answer that never comes
                    self.reply(rid, error=f"{type(msg).__name__} failed on the other side: {type(exc).__name__}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"connection {self.name} lost"))
                fut.exception()  # a waiter may have been cancelled already: do not warn about it
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception:
                log.exception("on_close failed for %s", self.name)

    # ------------------------------------------------------------ sending
    @property
    def is_open(self) -> bool:
        """True until the transport closes."""
        return self._transport is not None and not self._transport.is_closing()

    def send(self, msg: Message) -> None:
        """Queue a message; everything queued in one loop iteration goes in one write."""
        if self._transport is None:
            raise ConnectionLost(f"connection {self.name} is closed")
        self._out.append(encode(msg))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            if self._transport.get_write_buffer_size() > self.max_unsent_bytes:
                log.warning("%s: the peer does not read what it is sent (%d bytes waiting); closing the connection",
                            self.name, self._transport.get_write_buffer_size())
                self.abort()

    def is_backed_up(self) -> bool:
        """True while a lot of what was sent has not reached the peer (a producer may drop or wait)."""
        return self._transport is not None and self._transport.get_write_buffer_size() > BACKED_UP_BYTES

    def next_rid(self) -> int:
        """A request id unique on this connection."""
        return next(self._rids)

    def request(self, msg: Message) -> asyncio.Future[Any]:
        """Send a request (its ``rid`` is filled in) and return a future for the Reply value.

        The value is typed as the request's kind says (``Message.REPLY``); a reply that does
        not fit fails the future with ProtocolError and closes the connection.
        """
        rid = self.next_rid()
        msg.rid = rid  # type: ignore[attr-defined]
        fut = self._loop.create_future()
        self.send(msg)  # encodes first: a message that cannot be encoded leaves nothing pending
        self._pending[rid] = (fut, type(msg).REPLY)
        return fut

    def reply(self, rid: int, value: Any = None, error: str | None = None) -> None:
        """Answer a request; a closed connection drops the answer silently."""
        if self._transport is not None:
            if isinstance(value, Payload):
                value = value.to_wire()
            self.send(Reply(rid=rid, value=value, error=error))

    def close(self) -> None:
        """Flush what is queued and close."""
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping queued output."""
        if self._transport is not None:
            self._transport.abort()


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:/path`` or ``host:port`` -> (family, target)."""
    if address.startswith("unix:"):
        return "unix", address[5:]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {address!r}: expected 'host:port' or 'unix:/path'")
    return "tcp", (host.strip("[]"), int(port))


async def connect(
    address: str,
    handler: Handler | None = None,
    *,
    role: str,
    token: str = "",
    peer_id: bytes = b"",
    listen_address: str = "",
    name: str = "",
    on_close: Callable[[Connection], None] | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Connection:
    """Open a connection (within ``timeout``: a peer that does not answer a SYN would
    otherwise take the kernel's two minutes) and send the Hello frame."""
    loop = asyncio.get_running_loop()
    family, target = parse_address(address)

    def factory() -> Connection:
        conn = Connection(handler, name=name or address, on_close=on_close)
        conn.state["address"] = address  # who is at the other end (it sends us no Hello)
        return conn

    try:
        if family == "unix":
            assert isinstance(target, str)
            _, conn = await asyncio.wait_for(loop.create_unix_connection(factory, target), timeout)
        else:
            assert isinstance(target, tuple)
            _, conn = await asyncio.wait_for(loop.create_connection(factory, target[0], target[1]), timeout)
    except TimeoutError:
        raise ConnectionError(f"connecting to {address} timed out after {timeout:g} s") from None
    conn.send(Hello(role=role, token=token, peer_id=peer_id, address=listen_address))
    return conn


async def serve(
    address: str,
    handler: Handler,
    *,
    token: str = "",
    name: str = "",
    on_open: Callable[[Connection], None] | None = None,
    on_close: Callable[[Connection], None] | None = None,
    ping_accepted: bool = True,
) -> tuple[asyncio.AbstractServer, str]:
    """Listen at ``address`` (port 0 picks one); return the server and the real address.

    Every accepted connection must open with a Hello carrying ``token``, else it is closed
    before any other frame is looked at.
    """
    loop = asyncio.get_running_loop()
    family, target = parse_address(address)

    def factory() -> Connection:
        conn = Connection(
            handler, name=name, token=token, expect_hello=True, on_close=on_close, ping_accepted=ping_accepted,
        )
        if on_open is not None:
            on_open(conn)
        return conn

    if family == "unix":
        assert isinstance(target, str)
        try:
            os.unlink(target)  # a stale socket file from a crashed process
        except FileNotFoundError:
            pass
        server = await loop.create_unix_server(factory, target)
        return server, address
    assert isinstance(target, tuple)
    server = await loop.create_server(factory, target[0], target[1])
    port = server.sockets[0].getsockname()[1]
    return server, f"{target[0]}:{port}"
