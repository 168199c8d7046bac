"""The aiohttp embedding: a real server on 127.0.0.1 driven by 100 concurrent clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import aiohttp
import pytest
from aiohttp import web

import asyncray

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import aiohttp_service
from conftest import LoopLagProbe


def expected_score(text: str) -> float:
    digest = text.encode()
    for _ in range(2000):
        digest = hashlib.sha256(digest).digest()
    return digest[0] / 255


async def test_hundred_concurrent_requests_and_a_live_loop() -> None:
    app = aiohttp_service.make_app(num_cpus=2)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    assert asyncray.is_initialized()

    try:
        async with LoopLagProbe(0.01) as probe, aiohttp.ClientSession() as session:

            async def one(i: int) -> dict:
                async with session.post(f"http://127.0.0.1:{port}/score", json={"text": f"request number {i}"}) as r:
                    assert r.status == 200
                    return await r.json()

            answers = await asyncio.gather(*[one(i) for i in range(100)])
            for i, a in enumerate(answers):
                assert a["text"] == f"request number {i}"
                assert a["words"] == 3
                assert a["score"] == pytest.approx(expected_score(f"request number {i}"))
            assert sorted(a["count"] for a in answers) == list(range(1, 101))
            async with session.get(f"http://127.0.0.1:{port}/stats") as r:
                assert await r.json() == {"scored": 100, "words": 300}
            async with session.post(f"http://127.0.0.1:{port}/score", json={"nope": 1}) as r:
                assert r.status == 400
    finally:
        await runner.cleanup()
    assert not asyncray.is_initialized()
    # The loop kept ticking while 100 requests were served: no call blocked it.
    assert probe.lags and probe.worst < 0.5, f"event loop stalled for {probe.worst:.3f} s"
