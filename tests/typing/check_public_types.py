"""Types users get, checked by mypy (`mypy` in CI; see tests/test_typing.py). Never run."""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import asyncray
from asyncray import aio
from asyncray._actor.handle import ActorClass, ActorHandle
from asyncray._client.remote_function import BoundOptions, RemoteFunction


@asyncray.remote
def to_text(x: int, *, prefix: str = "") -> str:
    return prefix + str(x)


@asyncray.remote(num_cpus=1, max_retries=2)
def scale(values: list[float], factor: float) -> list[float]:
    return [v * factor for v in values]


@asyncray.remote
async def fetch(url: str) -> bytes:
    await asyncio.sleep(0)
    return url.encode()


class _Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self) -> int:
        self.n += 1
        return self.n


# mypy keeps a decorated class's own type whatever the decorator returns, so for typed
# handles make the remote class with a call (a decorated class still works at run time).
Counter = asyncray.remote(_Counter)


def sync_side() -> None:
    assert isinstance(scale, RemoteFunction)
    assert_type(scale.remote(values=[1.0], factor=2.0), asyncray.ObjectRef[list[float]])  # names kept
    ref = to_text.remote(1, prefix="n=")
    assert_type(ref, asyncray.ObjectRef[str])
    assert_type(asyncray.get(ref), str)
    assert_type(asyncray.get([ref, to_text.remote(2)]), list[str])
    assert_type(asyncray.get(ref, timeout=1.0), str)
    assert_type(scale.remote([1.0], 2.0), asyncray.ObjectRef[list[float]])
    assert_type(fetch.remote("u"), asyncray.ObjectRef[bytes])  # async def: what the coroutine returns
    opts = to_text.options(num_cpus=2)
    assert isinstance(scale.options(num_cpus=2), BoundOptions)
    assert_type(opts.remote(3), asyncray.ObjectRef[str])  # options() keeps the signature
    assert_type(asyncray.put(3.5), asyncray.ObjectRef[float])
    ready, rest = asyncray.wait([ref], num_returns=1)
    assert_type(ready, list[asyncray.ObjectRef[Any]])
    assert_type(rest, list[asyncray.ObjectRef[Any]])
    assert_type(Counter, ActorClass[_Counter])
    counter = Counter.remote(5)
    assert_type(counter, ActorHandle[_Counter])
    assert_type(counter.incr.remote(), Any)  # method calls are not typed (see ActorHandle)


async def async_side() -> None:
    ref = to_text.remote(1)
    assert_type(await ref, str)
    assert_type(await aio.get(ref), str)
    assert_type(await aio.get([ref]), list[str])
    assert_type(await fetch.remote("u"), bytes)
    assert_type(await asyncio.gather(ref, to_text.remote(2)), tuple[str, str])
    assert_type(await aio.put([1, 2]), asyncray.ObjectRef[list[int]])
    assert_type(ref.future().result(), str)
