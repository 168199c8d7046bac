"""The head's storage backends: the same behaviour from memory, SQLite and a real Redis server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from test_head_restart import redis_url  # noqa: F401  (a fixture: a redis-server of this test's own)

from asyncray._head.storage import Storage, open_storage


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def storage(request: pytest.FixtureRequest, tmp_path: str) -> AsyncIterator[Storage]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite://{tmp_path}/state/head.db"
    else:
        url = request.getfixturevalue("redis_url")
    store = await open_storage(url)
    try:
        yield store
    finally:
        await store.clear()
        await store.close()


async def test_put_load_delete(storage: Storage) -> None:
    await storage.put("actors", "a1", b"\x00one")
    await storage.put("actors", "a2", b"two")
    await storage.put("nodes", "n1", b"node")
    await storage.put("actors", "a1", b"one again")  # replaces
    assert await storage.load("actors") == {"a1": b"one again", "a2": b"two"}
    await storage.delete("actors", "a2")
    await storage.delete("actors", "missing")  # no error
    assert await storage.load("actors") == {"a1": b"one again"}
    assert await storage.load("nodes") == {"n1": b"node"}
    assert await storage.load("empty") == {}


async def test_writes_land_in_the_order_they_were_issued(storage: Storage) -> None:
    """Records are rewritten whole: the last write issued must be the one that stays."""
    await asyncio.gather(*(storage.put("actors", "x", str(i).encode()) for i in range(50)))
    assert await storage.load("actors") == {"x": b"49"}


async def test_clear_forgets_the_cluster(storage: Storage) -> None:
    await storage.put("meta", "token", b"t")
    await storage.put("actors", "a", b"1")
    await storage.clear()
    assert await storage.load("meta") == {} and await storage.load("actors") == {}


async def test_sqlite_state_outlives_the_process_that_wrote_it(tmp_path: str) -> None:
    url = f"sqlite://{tmp_path}/head.db"
    first = await open_storage(url)
    await first.put("nodes", "n", b"alive")
    await first.close()
    second = await open_storage(url)
    try:
        assert await second.load("nodes") == {"n": b"alive"}
    finally:
        await second.close()
    assert os.path.exists(f"{tmp_path}/head.db")


async def test_bad_urls_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match="expected memory://, sqlite:///PATH or redis://HOST:PORT/DB"):
        await open_storage("postgres://x")
    with pytest.raises(ValueError, match="absolute path"):
        await open_storage("sqlite://relative.db")
    with pytest.raises(ConnectionError, match="cannot open the head's storage at redis://127.0.0.1:1/0"):
        await open_storage("redis://127.0.0.1:1/0")
