"""The dashboard: JSON API and /metrics against a real runtime with known numbers of tasks,
actors and objects; the pages in headless Chromium; access control; dashboard off."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import _cdp as cdp  # tests/_cdp.py: a small Chrome DevTools protocol client
import aiohttp
import numpy as np
import psutil
import pytest

import asyncray
from asyncray.dashboard import free_port, start_dashboard
from asyncray.util import progress, state

N_OK, N_FAILED = 20, 3
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")


@asyncray.remote
def square(x: int) -> int:
    print(f"square-marker {x}")
    return x * x


@asyncray.remote
def explode(i: int) -> None:
    raise ValueError(f"explode-{i}")


@asyncray.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A runtime with 20 finished and 3 failed tasks, 2 live actors and 1 killed, 2 stored objects."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    info = asyncray.init(num_cpus=2, dashboard_port=free_port())
    assert info.dashboard_url and info["dashboard_url"].startswith("http://127.0.0.1:")
    assert asyncray.get([square.remote(i) for i in range(N_OK)]) == [i * i for i in range(N_OK)]
    for i in range(N_FAILED):
        with pytest.raises(ValueError):
            asyncray.get(explode.remote(i))
    alive = [Counter.options(name=f"counter-{i}").remote() for i in range(2)]
    doomed = Counter.remote()
    assert asyncray.get([a.incr.remote() for a in [*alive, doomed]]) == [1, 1, 1]
    asyncray.kill(doomed)
    big = [asyncray.put(np.ones(200_000)) for _ in range(2)]  # 1.6 MB each: shared memory, not inline
    yield {"url": info.dashboard_url, "actors": alive, "objects": big}
    if asyncray.is_initialized():
        asyncray.shutdown()


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.text()


async def _poll(session: aiohttp.ClientSession, url: str, ok: Any, timeout: float = 6.0) -> Any:
    """Fetch until ``ok(value)`` (owners report about once a second); the last value."""
    deadline = time.monotonic() + timeout
    value = await _get(session, url)
    while not ok(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        value = await _get(session, url)
    return value


def _tasks_done(s: dict[str, Any]) -> bool:
    return (s["by_name"].get("square", {}).get("FINISHED", 0) >= N_OK
            and s["by_name"].get("explode", {}).get("FAILED", 0) >= N_FAILED)


async def test_api_counts(cluster: dict[str, Any]) -> None:
    url = cluster["url"]
    async with aiohttp.ClientSession() as s:
        summary = await _poll(s, url + "/api/tasks/summary", _tasks_done)
        assert summary["by_name"]["square"] == {"FINISHED": N_OK}
        assert summary["by_name"]["explode"] == {"FAILED": N_FAILED}
        assert summary["counts"]["FAILED"] >= N_FAILED

        failed = await _get(s, url + "/api/tasks?state=FAILED&name=explode")
        assert len(failed) == N_FAILED
        assert all("ValueError" in t["error"] and "explode-" in t["error"] for t in failed)
        assert len(await _get(s, url + "/api/tasks?name=square&limit=5")) == 5

        actors = await _poll(s, url + "/api/actors", lambda a: sum(x["state"] == "DEAD" for x in a) == 1)
        assert sorted(a["state"] for a in actors) == ["ALIVE", "ALIVE", "DEAD"]
        assert {a["class_name"] for a in actors} == {"Counter"}
        assert {a["name"] for a in actors if a["state"] == "ALIVE"} == {"counter-0", "counter-1"}
        assert all(a["pid"] > 0 and a["node_id"] for a in actors if a["state"] == "ALIVE")
        assert (await _get(s, url + "/api/actors/summary"))["counts"] == {"ALIVE": 2, "DEAD": 1}

        objects = await _poll(
            s, url + "/api/objects", lambda o: sum(x["size"] >= 1_600_000 and x["owner_pid"] is not None for x in o) >= 2
        )
        big = [o for o in objects if o["size"] >= 1_600_000]
        assert len(big) == 2 and all(len(o["nodes"]) == 1 for o in big)
        # Who owns them (this driver), who references them (one ref each, no borrower), where they are.
        assert all(o["owner_pid"] == os.getpid() and o["owner_role"] == "driver" for o in big)
        assert all(o["refs"] == 1 and o["borrowers"] == 0 and o["spilled"] is False for o in big)
        osum = await _get(s, url + "/api/objects/summary")
        assert osum["stored_bytes"] >= 3_200_000

        nodes = await _get(s, url + "/api/nodes")
        assert len(nodes) == 1 and nodes[0]["alive"] and nodes[0]["resources"]["CPU"] == 2
        assert nodes[0]["object_store_used"] >= 3_200_000 and nodes[0]["host"]["mem_total"] > 0

        workers = await _get(s, url + "/api/workers")
        assert len(workers) >= 2
        actor_pids = {a["pid"] for a in actors if a["state"] == "ALIVE"}
        assert actor_pids <= {w["pid"] for w in workers}
        assert all(w["rss"] > 0 for w in workers if w["pid"] in actor_pids)
        assert {w["current"] for w in workers if w["pid"] in actor_pids} == {"actor Counter"}

        trace = await _get(s, url + "/api/timeline")
        spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
        assert len(spans) >= N_OK + N_FAILED
        assert all(e["dur"] >= 0 and e["ts"] > 0 and isinstance(e["pid"], int) for e in spans)


async def test_logs_api(cluster: dict[str, Any]) -> None:
    url = cluster["url"]
    async with aiohttp.ClientSession() as s:
        files = (await _get(s, url + "/api/logs"))["files"]
        assert files
        hits = []
        for f in files:
            res = await _get(s, url + f"/api/logs?worker={f['worker']}&q=square-marker")
            hits += res["lines"]
        assert len(hits) == N_OK and all(line.startswith("square-marker") for line in hits)
        actor = next(a for a in await _get(s, url + "/api/actors") if a["state"] == "ALIVE")
        by_actor = await _get(s, url + f"/api/logs?worker={actor['actor_id']}")
        assert by_actor["found"] and by_actor["pid"] == actor["pid"]
        by_pid = await _get(s, url + f"/api/logs?worker={actor['pid']}")
        assert by_pid["found"] and by_pid["pid"] == actor["pid"]


async def test_logs_api_refuses_unknown_ids(cluster: dict[str, Any]) -> None:
    # Only ids the nodes list as logs reach a node: anything else, a path above all, is a 404.
    url = cluster["url"]
    async with aiohttp.ClientSession() as s:
        for worker in ("999999999", "deadbeef", "0123456789abcdef0123456789abcdef", "../../../etc/passwd",
                       "..%2F..%2Fetc%2Fpasswd", "worker-x/../../y", "x" * 5000):
            async with s.get(url + "/api/logs", params={"worker": worker}) as r:
                assert r.status == 404, (worker, await r.text())
                assert "root:" not in await r.text()


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    raise AssertionError(f"metric {name}{labels} not in /metrics")


async def test_metrics(cluster: dict[str, Any]) -> None:
    url = cluster["url"]
    async with aiohttp.ClientSession() as s:
        await _poll(s, url + "/api/tasks/summary", _tasks_done)
        async with s.get(url + "/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
    assert _metric(text, "asyncray_tasks", state="FINISHED") >= N_OK
    assert _metric(text, "asyncray_tasks", state="FAILED") >= N_FAILED
    count = _metric(text, "asyncray_task_latency_seconds_count")
    assert count >= N_OK + N_FAILED and _metric(text, "asyncray_task_latency_seconds_bucket", le="+Inf") == count
    assert _metric(text, "asyncray_actors", state="ALIVE") == 2
    assert _metric(text, "asyncray_actors", state="DEAD") == 1
    assert _metric(text, "asyncray_object_store_used_bytes") >= 3_200_000
    assert _metric(text, "asyncray_nodes", state="ALIVE") == 1
    assert _metric(text, "asyncray_node_memory_total_bytes") > 0
    assert _metric(text, "asyncray_head_event_loop_lag_seconds") >= 0
    assert _metric(text, "asyncray_node_resource_total", resource="CPU") == 2
    # Each family is one group: HELP, TYPE, then its samples (Prometheus text format).
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))


def test_state_api_from_python(cluster: dict[str, Any]) -> None:
    deadline = time.monotonic() + 6
    while not _tasks_done(state.summarize_tasks()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(state.list_tasks(filters={"state": "FAILED", "name": "explode"})) == N_FAILED
    assert len(state.list_tasks(filters=[("name", "=", "square")], limit=7)) == 7
    assert len(state.list_actors(filters={"state": "ALIVE"})) == 2
    assert len(state.list_nodes()) == 1
    assert len(state.list_workers()) >= 2
    assert len([o for o in state.list_objects() if o["size"] >= 1_600_000]) == 2
    assert state.summarize_actors()["by_class"]["Counter"] == {"ALIVE": 2, "DEAD": 1}
    assert state.summarize_objects()["stored_objects"] >= 2


def test_progress_plain_lines(cluster: dict[str, Any]) -> None:
    out = io.StringIO()
    refs = [square.remote(i) for i in range(10)]
    got = list(progress(refs, desc="squares", file=out))
    assert sorted(got, key=refs.index) == refs
    assert out.getvalue().splitlines()[-1].startswith("squares: 10/10 (100%)")


def test_progress_terminal_bar(cluster: dict[str, Any]) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    assert len(list(progress([square.remote(i) for i in range(4)], file=out))) == 4
    assert "[" + "#" * 30 + "] 4/4" in out.getvalue() and out.getvalue().endswith("\n")


# ---------------------------------------------------------------- pages in a real browser
PAGE_CHECKS = {
    "cluster": ["Nodes", "Workers", "actor Counter"],
    "tasks": ["square", "explode", "FAILED"],
    "actors": ["Counter", "counter-0", "DEAD"],
    "objects": ["objects in shared memory", "1.5 MiB"],
    "logs": ["Worker"],
    "timeline": ["finished tasks on"],
    "jobs": ["Jobs (0)"],
}


@pytest.mark.skipif(cdp.find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
async def test_pages_in_browser(cluster: dict[str, Any]) -> None:
    url = cluster["url"]
    async with aiohttp.ClientSession() as s:
        await _poll(s, url + "/api/tasks/summary", _tasks_done)
    os.makedirs(ARTIFACTS, exist_ok=True)
    doc_dir = os.environ.get("ASYNCRAY_DOC_SCREENSHOTS")  # set once to refresh docs/img/
    async with cdp.Browser.launch() as browser:
        for page, expected in PAGE_CHECKS.items():
            target = url + ("/" if page == "cluster" else f"/{page}")
            if page == "logs":
                target += "#" + str(next(a["pid"] for a in state.list_actors() if a["state"] == "ALIVE"))
            text, errors = await browser.load(target, expected, timeout=10.0)
            png = await browser.screenshot()
            with open(os.path.join(ARTIFACTS, f"dashboard-{page}.png"), "wb") as f:
                f.write(png)
            if doc_dir:
                with open(os.path.join(doc_dir, f"dashboard-{page}.png"), "wb") as f:
                    f.write(png)
            assert not errors, f"console errors on {page}: {errors}"
            missing = [e for e in expected if e not in text]
            assert not missing, f"page {page} lacks {missing}; it shows:\n{text[:2000]}"


# ---------------------------------------------------------------- access and ports
async def test_token_required_off_loopback() -> None:
    from asyncray._head.service import HeadService

    head = HeadService("127.0.0.1:0", token="s3cret")
    await head.start()
    try:
        with pytest.raises(ValueError, match="token"):
            await start_dashboard(head, "0.0.0.0", 0)
        dash = await start_dashboard(head, "0.0.0.0", 0, token="s3cret")
        base = f"http://127.0.0.1:{dash.port}"
        try:
            # unsafe=True: keep cookies from an IP-address host, as a browser does
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.get(base + "/api/nodes") as r:
                    assert r.status == 401
                async with s.get(base + "/metrics", headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == 401
                async with s.get(base + "/api/nodes", headers={"Authorization": "Bearer s3cret"}) as r:
                    assert r.status == 200 and await r.json() == []
                async with s.get(base + "/?token=s3cret") as r:
                    assert r.status == 200
                async with s.get(base + "/api/jobs") as r:  # the cookie set by ?token= is enough now
                    assert r.status == 200
        finally:
            await dash.stop()
    finally:
        await head.stop()


async def test_loopback_needs_no_token_and_busy_port_moves_on() -> None:
    from asyncray._head.service import HeadService

    head = HeadService("127.0.0.1:0", token="t")
    await head.start()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        dash = await start_dashboard(head, "127.0.0.1", port, token="t")
        try:
            assert dash.port != port and dash.url == f"http://127.0.0.1:{dash.port}"
            async with aiohttp.ClientSession() as s, s.get(dash.url + "/api/tasks/summary") as r:
                assert r.status == 200 and await r.json() == {"counts": {"FINISHED": 0, "FAILED": 0}, "by_name": {}}
        finally:
            await dash.stop()
        await dash.stop()  # idempotent
    finally:
        busy.close()
        await head.stop()


async def test_loopback_answers_only_its_own_host_names() -> None:
    # DNS rebinding: a page from evil.example that rebinds its name to 127.0.0.1 sends that Host.
    from asyncray._head.service import HeadService

    head = HeadService("127.0.0.1:0", token="t")
    await head.start()
    try:
        dash = await start_dashboard(head, "127.0.0.1", 0)
        try:
            base = f"http://127.0.0.1:{dash.port}"
            async with aiohttp.ClientSession() as s:
                for host in ("evil.example", f"evil.example:{dash.port}", "127.0.0.1.evil.example", "localhost.evil",
                             "", "10.0.0.1"):
                    for path in ("/api/nodes", "/", "/metrics"):
                        async with s.get(base + path, headers={"Host": host}) as r:
                            assert r.status == 403, (host, path)
                for host in (f"127.0.0.1:{dash.port}", "127.0.0.1", f"localhost:{dash.port}", "LOCALHOST",
                             f"[::1]:{dash.port}"):
                    async with s.get(base + "/api/nodes", headers={"Host": host}) as r:
                        assert r.status == 200 and await r.json() == [], host
        finally:
            await dash.stop()
        # Off loopback the token guards instead, whatever name the machine is reached by.
        dash = await start_dashboard(head, "0.0.0.0", 0, token="t")
        try:
            async with aiohttp.ClientSession() as s:
                headers = {"Host": "node-7.cluster.example", "Authorization": "Bearer t"}
                async with s.get(f"http://127.0.0.1:{dash.port}/api/nodes", headers=headers) as r:
                    assert r.status == 200
        finally:
            await dash.stop()
    finally:
        await head.stop()


# ---------------------------------------------------------------- actor mailbox and loop lag
@asyncray.remote
class Napper:
    async def nap(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


async def test_actor_mailbox_and_loop_lag(cluster: dict[str, Any]) -> None:
    """Five calls parked in an async actor show as its mailbox within ~3 s, with its loop lag;
    sync actors show an empty mailbox and no loop lag."""
    url = cluster["url"]
    napper = Napper.remote()
    assert asyncray.get(napper.nap.remote(0)) == 0
    actor_id = napper.actor_id
    refs = [napper.nap.remote(5) for _ in range(5)]

    def row(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return next(a for a in rows if a["actor_id"] == actor_id)

    async with aiohttp.ClientSession() as s:
        start = time.monotonic()
        rows = await _poll(s, url + "/api/actors", lambda r: (row(r)["mailbox"] or 0) >= 5, timeout=3.5)
        assert (row(rows)["mailbox"] or 0) >= 5, f"no mailbox depth reported in time: {row(rows)}"
        assert time.monotonic() - start < 3.5
        lag = row(rows)["loop_lag_ms"]
        assert isinstance(lag, int | float) and 0 <= lag < 1000 and row(rows)["is_async"]
        counters = [a for a in rows if a["class_name"] == "Counter" and a["state"] == "ALIVE"]
        assert counters and all(a["mailbox"] == 0 and a["loop_lag_ms"] is None for a in counters)
        async with s.get(url + "/metrics") as r:
            text = await r.text()
        assert _metric(text, "asyncray_actor_mailbox", actor_id=actor_id) >= 5
        assert _metric(text, "asyncray_actor_loop_lag_seconds", actor_id=actor_id) >= 0
        assert asyncray.get(refs, timeout=10) == [5] * 5
        rows = await _poll(s, url + "/api/actors", lambda r: row(r)["mailbox"] == 0, timeout=4)
        assert row(rows)["mailbox"] == 0
    asyncray.kill(napper)


def _tcp_listeners() -> list[Any]:
    return [c for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]


def test_dashboard_off_changes_nothing(cluster: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    """Last in this module: the same program with the dashboard off gives the same results, prints
    no dashboard line and leaves no port listening."""
    asyncray.shutdown()
    assert not _tcp_listeners()
    capfd.readouterr()
    results = {}
    for include in (True, False):
        info = asyncray.init(num_cpus=2, include_dashboard=include, dashboard_port=free_port())
        try:
            results[include] = asyncray.get([square.remote(i) for i in range(5)])
            c = Counter.remote()
            results[include].append(asyncray.get(c.incr.remote()))
            listeners = _tcp_listeners()
            err = capfd.readouterr().err
            if include:
                assert info.dashboard_url and len(listeners) == 1
                assert f"asyncray: dashboard at {info.dashboard_url}\n" in err
            else:
                assert info.dashboard_url is None and not listeners
                assert "dashboard" not in err
        finally:
            asyncray.shutdown()
    assert results[True] == results[False] == [0, 1, 4, 9, 16, 1]
