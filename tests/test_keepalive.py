"""Keepalives: a silent peer is dropped after the silence limit; a live one, idle, is kept."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, connect, serve


async def test_a_peer_that_never_answers_is_dropped(tmp_path: Any) -> None:
    # A listener that accepts and then says nothing, like a SIGSTOPped process.
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen()
    try:
        conn = await connect(f"unix:{path}", None, role="driver", name="to-mute")
        pending = conn.request(m.GetClusterState(rid=0))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conn.keep_alive(0.05, 0.3)
        await asyncio.wait_for(conn.closed, 5)
        assert 0.25 < loop.time() - t0 < 2
        assert pending.done() and pending.exception() is not None  # the request fails, it does not hang
    finally:
        mute.close()


async def test_an_idle_live_peer_is_kept(tmp_path: Any) -> None:
    def handler(conn: Connection, msg: m.Message) -> None:
        pass

    server, address = await serve(f"unix:{tmp_path}/live.sock", handler, name="live")
    try:
        conn = await connect(address, None, role="driver", name="to-live")
        conn.keep_alive(0.05, 0.3)
        await asyncio.sleep(1.0)  # idle far past the silence limit: pings and their answers keep it
        assert conn.is_open
        conn.close()
    finally:
        server.close()


async def test_a_peer_that_does_not_read_cannot_grow_our_memory(tmp_path: Any) -> None:
    # A client that connects, says hello and then never reads: the server's sends pile up in
    # the kernel and then in the transport's buffer; past the limit the connection is dropped.
    got: list[Connection] = []

    def handler(conn: Connection, msg: m.Message) -> None:
        pass

    server, address = await serve(f"unix:{tmp_path}/s.sock", handler, name="server", on_open=got.append)
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(address[5:])
    try:
        from asyncray._wire.codec import encode

        reader.sendall(encode(m.Hello(role="driver")))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        [conn] = got
        conn.max_unsent_bytes = 1024 * 1024
        chunk = m.LogLines(worker_id=b"w", pid=1, lines=[["p", "stdout", "x" * 60_000]])
        for _ in range(200):  # 12 MB offered, 1 MB allowed to wait
            if not conn.is_open:
                break
            conn.send(chunk)
            await asyncio.sleep(0)
        await asyncio.wait_for(conn.closed, 5)
        assert not conn.is_open
    finally:
        reader.close()
        server.close()


def test_a_driver_that_reads_too_slowly_loses_log_lines_and_is_told_how_many() -> None:
    from types import SimpleNamespace

    from asyncray._node.service import NodeService

    class Subscriber:
        def __init__(self) -> None:
            self.sent: list[m.LogLines] = []
            self.backed_up = False
            self.state: dict[str, Any] = {}
            self.is_open = True

        def is_backed_up(self) -> bool:
            return self.backed_up

        def send(self, msg: m.LogLines) -> None:
            self.sent.append(msg)

    sub = Subscriber()
    node: Any = SimpleNamespace(_log_subscribers={sub})

    def lines(n: int) -> m.LogLines:
        return m.LogLines(worker_id=b"w", pid=7, lines=[["(f pid=7)", "stdout", f"line {i}"] for i in range(n)])

    NodeService._forward_logs(node, lines(2))
    sub.backed_up = True
    NodeService._forward_logs(node, lines(3))
    NodeService._forward_logs(node, lines(4))
    sub.backed_up = False
    NodeService._forward_logs(node, lines(1))
    texts = [line[2] for msg in sub.sent for line in msg.lines]
    assert texts == ["line 0", "line 1", "7 lines of worker output were dropped: this driver read too slowly", "line 0"]
