"""The node-to-node object stream on its own: a real server thread, real sockets, real files."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from asyncray._node import transfer
from asyncray._store.shm import ObjectStore

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-token"


@pytest.fixture
def holder(tmp_path) -> Iterator[tuple[ObjectStore, transfer.TransferServer]]:
    store = ObjectStore(str(tmp_path / "store"), create=True)
    server = transfer.TransferServer("127.0.0.1", TOKEN, lambda oid: _locate(store, oid))
    yield store, server
    server.stop()


def _locate(store: ObjectStore, oid: bytes) -> str | None:
    return store.path(oid) if store.contains(oid) else None


def _put(store: ObjectStore, oid: bytes, value: object) -> None:
    bufs: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    store.write(oid, data, bufs)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("splice", ["both", "none", "socket only"])
def test_an_object_crosses_intact(holder, tmp_path, monkeypatch, splice):
    store, server = holder
    if splice == "none":  # the fallback for systems without splice(2)
        monkeypatch.delattr(os, "splice", raising=False)
    elif splice == "socket only":  # a destination file system that refuses splice
        real = os.splice

        def refuse_files(src, dst, count, **kw):
            if "offset_dst" in kw:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(src, dst, count, **kw)

        monkeypatch.setattr(os, "splice", refuse_files)
    oid = os.urandom(16)
    _put(store, oid, np.random.default_rng(1).random(3_000_000))  # 24 MB, not a multiple of any chunk
    dest = str(tmp_path / "dest")
    size = transfer.fetch(server.address, TOKEN, oid, dest)
    assert size == os.path.getsize(store.path(oid))
    assert _digest(dest) == _digest(store.path(oid))


def test_a_warm_destination_larger_than_the_object_keeps_the_object_readable(holder, tmp_path):
    store, server = holder
    oid = os.urandom(16)
    value = np.arange(500_000, dtype=np.int64)
    _put(store, oid, value)
    dest_store = ObjectStore(str(tmp_path / "other"), create=True)
    dest = dest_store.path(oid)
    with open(dest, "wb") as f:
        f.write(b"\xff" * (8 * 1024 * 1024))  # an old, larger segment full of junk
    transfer.fetch(server.address, TOKEN, oid, dest)
    data, bufs = dest_store.read(oid)
    assert np.array_equal(pickle.loads(data, buffers=bufs), value)


def test_a_missing_object_is_reported(holder, tmp_path):
    _, server = holder
    with pytest.raises(FileNotFoundError, match="no longer holds"):
        transfer.fetch(server.address, TOKEN, os.urandom(16), str(tmp_path / "dest"))


def test_a_wrong_token_gets_nothing_and_the_server_keeps_serving(holder, tmp_path):
    store, server = holder
    oid = os.urandom(16)
    _put(store, oid, b"x" * 1000)
    with pytest.raises(ConnectionError):
        transfer.fetch(server.address, "wrong", oid, str(tmp_path / "dest"))
    host, _, port = server.address.rpartition(":")
    with socket.create_connection((host, int(port))) as sock:  # garbage, then hang up
        sock.sendall(os.urandom(5000))
    assert transfer.fetch(server.address, TOKEN, oid, str(tmp_path / "dest2")) > 0


def test_a_silent_unauthenticated_connection_is_dropped_after_the_request_deadline(holder):
    _, server = holder
    host, _, port = server.address.rpartition(":")
    with socket.create_connection((host, int(port))) as silent:
        silent.settimeout(transfer.REQUEST_TIMEOUT_S + 5)
        assert silent.recv(10) == b""


def test_unauthenticated_connections_are_bounded_in_number(monkeypatch):
    import time

    monkeypatch.setattr(transfer, "MAX_UNAUTHENTICATED", 2)
    server = transfer.TransferServer("127.0.0.1", TOKEN, lambda oid: None)
    host, _, port = server.address.rpartition(":")
    silent = [socket.create_connection((host, int(port))) for _ in range(2)]
    try:
        deadline = time.monotonic() + 5
        while server._unauthenticated._value > 0:  # both silent peers hold their slots
            assert time.monotonic() < deadline, "the silent peers were not taken in"
            time.sleep(0.01)
        with socket.create_connection((host, int(port)), timeout=3) as extra:  # no slot: closed at once
            assert extra.recv(10) == b""
    finally:
        for sock in silent:
            sock.close()
        server.stop()


def test_only_the_object_is_sent_when_its_file_is_a_longer_warm_segment(holder, tmp_path):
    store, server = holder
    segment = os.path.join(store.directory, "segment-test")
    with open(segment, "wb") as f:
        f.write(b"\xee" * (4 * 1024 * 1024))  # a recycled file, longer than what goes in it
    store.reserve = lambda size: {"segment": segment}
    oid = os.urandom(16)
    value = np.arange(300_000, dtype=np.int64)  # 2.4 MB
    _put(store, oid, value)
    assert os.path.getsize(store.path(oid)) == 4 * 1024 * 1024
    dest_store = ObjectStore(str(tmp_path / "other"), create=True)
    size = transfer.fetch(server.address, TOKEN, oid, dest_store.path(oid))
    assert size < 2_500_000 and os.path.getsize(dest_store.path(oid)) == size
    data, bufs = dest_store.read(oid)
    assert np.array_equal(pickle.loads(data, buffers=bufs), value)
