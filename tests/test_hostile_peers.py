"""Authenticated peers that send well-formed frames full of nonsense: the head drops that one
connection and goes on serving everyone else (property-based, every message kind)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import typing
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncray._client.portal import Portal
from asyncray._head.service import HeadService
from asyncray._wire import messages as m
from asyncray._wire.codec import FrameDecoder, encode
from asyncray._wire.connection import connect

TOKEN = "hostile-test-token"

# Values of every msgpack type, extreme ones included: whatever a field declares, most of
# these are the wrong type for it.
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=4),
    max_leaves=10,
)
KINDS = sorted(m.kinds().items())


def _fields(cls: type[m.Message]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


@st.composite
def hostile_bodies(draw: st.DrawFn) -> dict[Any, Any]:
    """A map with a real kind and real field names, but values drawn from anything at all."""
    kind, cls = draw(st.sampled_from(KINDS))
    names = _fields(cls)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))) if names else []
    body: dict[Any, Any] = {"k": kind}
    for name in chosen:
        body[name] = draw(ANY_VALUE)
    return body


@settings(max_examples=400, deadline=None)
@given(hostile_bodies())
def test_decoding_nonsense_gives_a_message_or_a_protocol_error(body: dict[Any, Any]) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    try:
        msgs = FrameDecoder().feed(len(payload).to_bytes(4, "big") + payload)
    except m.ProtocolError:
        return
    [msg] = msgs
    hints = typing.get_type_hints(type(msg))
    for name in _fields(type(msg)):  # what passes is what the protocol declares
        value, hint = getattr(msg, name), hints[name]
        if hint in (int, str, bytes, bool):
            assert type(value) is hint, (name, value)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Portal, HeadService, str]]:
    portal = Portal()
    path = tmp_path_factory.mktemp("hostile") / "head.sock"

    async def start() -> HeadService:
        service = HeadService(f"unix:{path}", token=TOKEN)
        await service.start()
        return service

    crashes: list[logging.LogRecord] = []
    catcher = logging.Handler(level=logging.ERROR)
    catcher.emit = crashes.append  # type: ignore[method-assign]
    logging.getLogger("asyncray").addHandler(catcher)
    service = portal.call(start(), timeout=10)
    try:
        yield portal, service, str(path)
    finally:
        portal.call(service.stop(), timeout=10)
        portal.stop()
        logging.getLogger("asyncray").removeHandler(catcher)
    # A handler that raised (instead of the decoder refusing the frame) would be logged here.
    assert not crashes, [r.getMessage() for r in crashes]


def _still_serves(portal: Portal, address: str) -> bool:
    async def ask() -> bool:
        conn = await connect(address, None, role="driver", token=TOKEN, name="probe")
        try:
            state = await conn.request(m.GetClusterState(rid=0))
            return isinstance(state, m.ClusterState)
        finally:
            conn.close()

    return portal.call(ask(), timeout=10)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=hostile_bodies(), role=st.sampled_from(["driver", "worker", "node"]))
def test_the_head_survives_hostile_frames_from_authenticated_peers(head: Any, body: dict[Any, Any], role: str) -> None:
    portal, service, path = head
    payload = msgpack.packb(body, use_bin_type=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(encode(m.Hello(role=role, token=TOKEN, peer_id=b"hostile")) + len(payload).to_bytes(4, "big") + payload)
        try:  # the head either answers something, closes this connection, or ignores it
            s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            pass
    assert _still_serves(portal, f"unix:{path}")
    assert not any(n["node_id"] == b"hostile" and not isinstance(n.get("info"), dict) for n in service.nodes.values())
