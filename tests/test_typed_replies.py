"""Replies are typed: the requester gets a dataclass, or ProtocolError and a closed connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncray._wire import messages as m
from asyncray._wire.connection import Connection, connect, serve


async def _pair(tmp_path: Any, answer: Any) -> tuple[asyncio.AbstractServer, Connection]:
    """A server that answers every request with ``answer``, and a client connected to it."""

    def handler(conn: Connection, msg: m.Message) -> None:
        conn.reply(msg.rid, answer)  # type: ignore[attr-defined]

    server, address = await serve(f"unix:{tmp_path}/s.sock", handler, token="t", name="fake-node")
    client = await connect(address, None, role="driver", token="t", name="client")
    return server, client


async def test_a_lease_grant_arrives_as_a_dataclass(tmp_path):
    grant = m.LeaseGrant(lease_id=3, worker_id=b"w", address="unix:/x", pid=12, node_id=b"n")
    server, client = await _pair(tmp_path, grant)
    try:
        reply = await asyncio.wait_for(client.request(m.RequestLease(rid=0, resources={"CPU": 1.0})), 5)
        assert reply == grant
        (tmp_path / "other").mkdir()
        redirect_server, redirect_client = await _pair(tmp_path / "other", {"redirect": "10.0.0.2:7"})
        try:
            got = await asyncio.wait_for(redirect_client.request(m.RequestLease(rid=0, resources={})), 5)
            assert got == m.LeaseRedirect(redirect="10.0.0.2:7")
        finally:
            redirect_client.close()
            redirect_server.close()
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize(
    ("request_msg", "bad_answer", "match"),
    [
        (m.RequestLease(rid=0, resources={}), {"lease_id": "3", "worker_id": b"w", "address": "a", "pid": 1, "node_id": b"n"},
         "field 'lease_id' of LeaseGrant is a str"),
        (m.RequestLease(rid=0, resources={}), None, "LeaseGrant must be a map"),
        (m.GetClusterState(rid=0), {"nodes": [{"node_id": b"n", "address": "a", "resources": {}, "available": {},
                                               "alive": True, "info": None}]},
         "field 'info' of NodeView is a null"),
        (m.WaitActor(rid=0, actor_id=b"a"), {"state": "ALIVE"}, "bad fields for ActorEntry"),
        (m.FetchObject(rid=0, object_id=b"o", node_id=b"n"), "yes", "a reply is a str"),
    ],
)
async def test_a_reply_of_the_wrong_shape_fails_the_request_and_closes_the_connection(
    tmp_path, request_msg, bad_answer, match
):
    server, client = await _pair(tmp_path, bad_answer)
    try:
        with pytest.raises(m.ProtocolError, match=match):
            await asyncio.wait_for(client.request(request_msg), 5)
        await asyncio.wait_for(client.closed, 5)  # that peer is not trusted any more
        assert not client.is_open
    finally:
        client.close()
        server.close()


def test_an_unknown_state_kind_is_refused_where_it_is_made():
    with pytest.raises(ValueError, match="unknown state kind 'taks'; one of nodes, workers, tasks"):
        m.GetState(rid=0, kind="taks")  # type: ignore[arg-type]
    assert m.GetState(rid=0, kind="tasks").kind is m.StateKind.TASKS  # type: ignore[arg-type]


async def test_a_request_whose_handler_fails_gets_an_error_not_silence(tmp_path):
    """A bug on the serving side must not leave a live requester waiting forever: the failure
    comes back as the reply, and the connection stays up for the next request."""
    from asyncray._wire.connection import RemoteCallError

    def handler(conn: Connection, msg: m.Message) -> None:
        if isinstance(msg, m.GetClusterState):
            raise KeyError("a bug in the handler")
        conn.reply(msg.rid, {"ok": True})  # type: ignore[attr-defined]

    server, address = await serve(f"unix:{tmp_path}/s.sock", handler, token="t", name="buggy")
    client = await connect(address, None, role="driver", token="t", name="client")
    try:
        with pytest.raises(RemoteCallError, match="GetClusterState failed on the other side: KeyError"):
            await asyncio.wait_for(client.request(m.GetClusterState(rid=0)), 5)
        assert await asyncio.wait_for(client.request(m.GetNodeInfo(rid=0)), 5) == {"ok": True}
    finally:
        client.close()
        server.close()


async def test_connecting_to_a_peer_that_never_answers_times_out():
    """A SYN nobody answers would wait for the kernel's two minutes: connect() gives up sooner."""
    import socket
    import time

    # A listening socket whose backlog is full and that never accepts: later SYNs are not answered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    host, port = listener.getsockname()
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, port))
            fillers.append(s)
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="timed out after 0.5 s"):
            await connect(f"{host}:{port}", None, role="driver", token="t", timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        for s in fillers:
            s.close()
        listener.close()
