"""Where the head keeps what must outlive it: a small table/key/value interface, three backends.

* ``memory://``: nothing outlives the process (the embedded cluster of ``init()``, tests);
* ``sqlite:///path/head.db``: the default of ``asyncray start --head``, a file in the session
  directory (stdlib ``sqlite3``, WAL journal, ``synchronous=FULL``: a write is on disk when
  ``put`` returns);
* ``redis://host:port/db``: a Redis server shared by heads on other machines (the optional
  ``redis`` package: ``pip install 'asyncray[redis]'``); a write is acknowledged by the server
  when ``put`` returns.

Tables are names ("meta", "nodes", "actors", ...); keys are strings; values are bytes (the head
packs them with msgpack). Writes are applied in the order they were issued, whatever the
backend does underneath: the head's records are rewritten whole, so order is correctness.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import urllib.parse
from typing import Any, Protocol

DEFAULT_REDIS_PREFIX = "asyncray"
TABLES = ("meta", "nodes", "actors")  # what the head writes
REDIS_TIMEOUT_S = 5.0


class Backend(Protocol):
    """What a storage backend implements (all writes durable on return)."""

    async def put(self, table: str, key: str, value: bytes) -> None: ...
    async def delete(self, table: str, key: str) -> None: ...
    async def load(self, table: str) -> dict[str, bytes]: ...
    async def close(self) -> None: ...


class MemoryBackend:
    """Tables in a dict: for a head whose state may die with it."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, bytes]] = {}

    async def put(self, table: str, key: str, value: bytes) -> None:
        self.tables.setdefault(table, {})[key] = value

    async def delete(self, table: str, key: str) -> None:
        self.tables.get(table, {}).pop(key, None)

    async def load(self, table: str) -> dict[str, bytes]:
        return dict(self.tables.get(table, {}))

    async def close(self) -> None:
        pass


class SQLiteBackend:
    """One SQLite file; every call runs on one private thread (sqlite3 connections are per thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="head-storage")
        self._db: sqlite3.Connection | None = None

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        db = sqlite3.connect(self.path, timeout=REDIS_TIMEOUT_S, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # committed means on disk, also across a power cut
        db.execute("CREATE TABLE IF NOT EXISTS kv (tbl TEXT, key TEXT, value BLOB, PRIMARY KEY (tbl, key))")
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _exec(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db.execute(sql, params).fetchall()

    async def open(self) -> None:
        await self._run(self._open)

    async def put(self, table: str, key: str, value: bytes) -> None:
        await self._run(self._exec, "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (table, key, value))

    async def delete(self, table: str, key: str) -> None:
        await self._run(self._exec, "DELETE FROM kv WHERE tbl = ? AND key = ?", (table, key))

    async def load(self, table: str) -> dict[str, bytes]:
        rows = await self._run(self._exec, "SELECT key, value FROM kv WHERE tbl = ?", (table,))
        return {k: bytes(v) for k, v in rows}

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._thread.shutdown(wait=False)


class RedisBackend:
    """One Redis hash per table, keys prefixed so several clusters can share a server."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise RuntimeError(
                f"--storage {url} needs the 'redis' package: pip install 'asyncray[redis]'"
            ) from exc
        parsed = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parsed.query)
        self.prefix = query.pop("prefix", [DEFAULT_REDIS_PREFIX])[0]
        clean = urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(query, doseq=True)))
        self._redis = aioredis.Redis.from_url(
            clean, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        )

    def _key(self, table: str) -> str:
        return f"{self.prefix}:{table}"

    async def open(self) -> None:
        await self._redis.ping()

    async def put(self, table: str, key: str, value: bytes) -> None:
        await self._redis.hset(self._key(table), key, value)

    async def delete(self, table: str, key: str) -> None:
        await self._redis.hdel(self._key(table), key)

    async def load(self, table: str) -> dict[str, bytes]:
        raw = await self._redis.hgetall(self._key(table))  # bytes keys and values: no decode_responses
        return {_text(k): v if isinstance(v, bytes) else v.encode() for k, v in raw.items()}

    async def close(self) -> None:
        await self._redis.aclose()


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


class Storage:
    """The head's durable tables: ordered writes over one backend."""

    def __init__(self, url: str, backend: Backend) -> None:
        self.url = url
        self.backend = backend
        self._order = asyncio.Lock()  # wakes waiters first come, first served

    @property
    def durable(self) -> bool:
        """True when what is written here outlives the head process."""
        return not isinstance(self.backend, MemoryBackend)

    async def put(self, table: str, key: str, value: bytes) -> None:
        """Write (replace) one value; it is durable when this returns."""
        async with self._order:
            await self.backend.put(table, key, value)

    async def delete(self, table: str, key: str) -> None:
        """Remove one value (no error when it is not there)."""
        async with self._order:
            await self.backend.delete(table, key)

    async def load(self, table: str) -> dict[str, bytes]:
        """Every key and value of a table."""
        async with self._order:
            return await self.backend.load(table)

    async def clear(self, tables: tuple[str, ...] = TABLES) -> None:
        """Forget a cluster: remove every key of its tables (``asyncray stop``)."""
        for table in tables:
            for key in await self.load(table):
                await self.delete(table, key)

    async def close(self) -> None:
        """Finish pending writes and let go of the backend."""
        async with self._order:
            await self.backend.close()


async def open_storage(url: str) -> Storage:
    """The storage a URL names (``memory://``, ``sqlite:///path``, ``redis://host:port/db``).

    Fails with ValueError for an unknown scheme and ConnectionError when the backend cannot
    be reached, each naming the URL.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    backend: Any
    if scheme == "memory":
        backend = MemoryBackend()
    elif scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise ValueError(f"storage {url!r}: give an absolute path, e.g. sqlite:///var/lib/asyncray/head.db")
        backend = SQLiteBackend(path)
    elif scheme in ("redis", "rediss", "unix"):
        backend = RedisBackend(url)
    else:
        raise ValueError(f"storage {url!r}: expected memory://, sqlite:///PATH or redis://HOST:PORT/DB")
    if hasattr(backend, "open"):
        try:
            await backend.open()
        except Exception as exc:
            raise ConnectionError(f"cannot open the head's storage at {url}: {type(exc).__name__}: {exc}") from exc
    return Storage(url, backend)
