"""A small Chrome DevTools protocol client for page tests: headless Chromium driven over a
WebSocket with aiohttp (no selenium, no extra dependency). Collects console errors and
uncaught exceptions per page, reads the rendered text, takes screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import aiohttp


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _read_port(path: str) -> int:
    try:
        with open(path) as f:
            first = f.read().split()
    except FileNotFoundError:
        return 0
    return int(first[0]) if first else 0


class Browser:
    """One headless browser with one page."""

    def __init__(self, proc: subprocess.Popen[bytes], profile: str) -> None:
        self.proc = proc
        self.profile = profile
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def launch(cls) -> Browser:
        """Start Chromium (use with ``async with``)."""
        exe = find_chromium()
        assert exe is not None
        profile = tempfile.mkdtemp(prefix="asyncray-chromium-")
        proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        return cls(proc, profile)

    async def __aenter__(self) -> Browser:
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (port := _read_port(port_file)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.1)
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json(content_type=None)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.ws is not None:
                try:
                    await asyncio.wait_for(self.send("Browser.close"), 3)
                except (TimeoutError, ConnectionError, RuntimeError):
                    pass
                await self.ws.close()
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            if self.session is not None:
                await self.session.close()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # chromium's helpers share its process group
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                if "error" in data:
                    fut.set_exception(RuntimeError(str(data["error"])))
                else:
                    fut.set_result(data.get("result", {}))
            elif "method" in data:
                self._events.append(data)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("devtools connection closed"))

    async def send(self, method: str, **params: Any) -> Any:
        """One protocol command; its result."""
        assert self.ws is not None
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.ws.send_str(json.dumps({"id": rid, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 15)

    def _errors(self) -> list[str]:
        out = []
        for ev in self._events:
            method, p = ev["method"], ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(str(d.get("exception", {}).get("description") or d.get("text")))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"{p['entry'].get('text')} ({p['entry'].get('url', '')})")
        return out

    async def load(self, url: str, expect: list[str], timeout: float = 10.0) -> tuple[str, list[str]]:
        """Open ``url``, wait until the page text contains every ``expect`` string (or the timeout),
        let it poll once more; return its text and the console errors seen meanwhile."""
        self._events.clear()
        await self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            res = await self.send("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                  returnByValue=True)
            text = str(res.get("result", {}).get("value", ""))
            if all(e in text for e in expect):
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.8)  # one more polling round: errors in refreshes count too
        res = await self.send("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
        return str(res.get("result", {}).get("value", text)), self._errors()

    async def screenshot(self) -> bytes:
        """The page as PNG."""
        res = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(res["data"])
