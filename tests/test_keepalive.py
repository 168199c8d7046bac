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
