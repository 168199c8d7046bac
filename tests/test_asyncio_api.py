"""The asyncio face: awaitable refs, asyncray.aio, and blocking calls on a running loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import LoopLagProbe

import asyncray
from asyncray import aio
from asyncray import exceptions as exc


@asyncray.remote
def add(a, b):
    return a + b


@asyncray.remote
def nap(x, seconds):
    time.sleep(seconds)
    return x


@asyncray.remote
async def anap(x, seconds):
    await asyncio.sleep(seconds)
    return x


@asyncray.remote
def boom():
    raise ValueError("bad thing")


@pytest.fixture
async def aio_runtime():
    await aio.init(num_cpus=2, include_dashboard=False)
    await asyncio.gather(nap.remote(0, 0.3), nap.remote(0, 0.3))  # both workers up before timing anything
    yield
    await aio.shutdown()


async def test_await_gather_wait_on_refs(aio_runtime):
    assert await add.remote(1, 2) == 3
    assert await asyncio.gather(*[add.remote(i, i) for i in range(20)]) == [2 * i for i in range(20)]
    fast, slow = nap.remote(1, 0.05), nap.remote(2, 2.0)
    done, pending = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    assert done == {fast} and pending == {slow}
    assert [r.result() for r in done] == [1]
    done, pending = await asyncio.wait([slow], timeout=5)
    assert done == {slow} and slow.result() == 2


async def test_aio_twins(aio_runtime):
    ref = await aio.put({"a": 1})
    assert await aio.get(ref) == {"a": 1}
    assert await aio.get([add.remote(1, 1), ref]) == [2, {"a": 1}]
    refs = [nap.remote(0, 0.5), nap.remote(1, 0.05)]
    ready, not_ready = await aio.wait(refs, num_returns=1, timeout=5)
    assert ready == [refs[1]] and not_ready == [refs[0]]
    await refs[0]
    order = [r async for r in aio.as_completed([nap.remote("slow", 0.4), nap.remote("fast", 0.05)])]
    assert [await r for r in order] == ["fast", "slow"]
    with pytest.raises(exc.GetTimeoutError):
        await aio.get(nap.remote(0, 3), timeout=0.1)
    slow = nap.remote(0, 30)
    await asyncio.sleep(0.3)
    await aio.cancel(slow)
    with pytest.raises(exc.TaskCancelledError):
        await slow


async def test_errors_raise_at_await(aio_runtime):
    with pytest.raises(ValueError, match="bad thing") as info:
        await boom.remote()
    assert isinstance(info.value, exc.TaskError)


async def test_async_tasks_and_concurrency(aio_runtime):
    t = time.monotonic()
    assert await asyncio.gather(*[anap.remote(i, 0.5) for i in range(20)]) == list(range(20))
    assert time.monotonic() - t < 3.0  # 20 half-second coroutines overlap on two workers


async def test_submitting_never_blocks_the_loop(aio_runtime):
    async with LoopLagProbe() as probe:
        refs = [nap.remote(i, 0.2) for i in range(8)]
        assert await asyncio.gather(*refs) == list(range(8))
    assert probe.worst < 0.3


async def test_blocking_call_on_the_runtime_loop_names_the_aio_twin(aio_runtime):
    ref = nap.remote(1, 0.5)
    with pytest.raises(RuntimeError, match=r"asyncray\.aio\.get"):
        asyncray.get(ref)
    with pytest.raises(RuntimeError, match=r"asyncray\.aio\.wait"):
        asyncray.wait([nap.remote(1, 0.5)])
    assert await ref == 1


async def test_sync_init_refs_are_awaitable_from_another_loop():
    asyncray.init(num_cpus=2, include_dashboard=False)
    try:
        assert await add.remote(20, 22) == 42
        assert await asyncio.gather(*[add.remote(i, 0) for i in range(100)]) == list(range(100))
        # A blocking call from a thread whose (other) loop runs works: it blocks only that loop.
        assert asyncray.get(add.remote(1, 1)) == 2
        assert add.remote(2, 2).future().result(timeout=10) == 4
    finally:
        asyncray.shutdown()


def test_blocking_as_completed():
    asyncray.init(num_cpus=2, include_dashboard=False)
    try:
        refs = [nap.remote("slow", 0.4), nap.remote("fast", 0.05)]
        assert [asyncray.get(r) for r in asyncray.as_completed(refs)] == ["fast", "slow"]
    finally:
        asyncray.shutdown()


async def test_async_task_calling_blocking_get_gets_a_clear_error(aio_runtime):
    @asyncray.remote
    async def bad_nested():
        return asyncray.get(add.remote(1, 1))

    @asyncray.remote
    async def good_nested():
        return await add.remote(1, 1)

    with pytest.raises(RuntimeError, match=r"await asyncray\.aio\.get"):
        await bad_nested.remote()
    assert await good_nested.remote() == 2
