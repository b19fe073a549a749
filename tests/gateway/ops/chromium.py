"""Debian's headless Chromium driven over its own DevTools protocol (a websocket), for the
status page's browser test: no browser download, no driver package.

`Chromium.start()` raises `ChromiumUnavailable` (the test skips, saying why) when there is no
`chromium` on PATH or it does not come up on this box.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 30.0


class ChromiumUnavailable(Exception):
    pass


class Chromium:
    """One headless browser with one page; `async with` starts it and ends it (its process
    group, which it was started in)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._drainer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chromium:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise ChromiumUnavailable("no `chromium` on PATH (./dev.sh test installs Debian's)")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self._process.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    line = (await self._process.stderr.readline()).decode(errors="replace")
                    if not line:
                        raise ChromiumUnavailable(
                            "chromium exited at start: " + " | ".join(seen[-5:])
                        )
                    seen.append(line.strip())
                    if match := re.search(r"DevTools listening on ws://([^/]+)/", line):
                        endpoint = match.group(1)
                        break
        except TimeoutError:
            raise ChromiumUnavailable(
                f"chromium did not open DevTools within {START_TIMEOUT_S:g} s: {seen[-5:]}"
            ) from None
        self._drainer = asyncio.get_running_loop().create_task(
            self._drain(), name="chromium-stderr"
        )
        self._http = aiohttp.ClientSession()
        async with self._http.get(f"http://{endpoint}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _drain(self) -> None:
        process = self._process
        if process is not None and process.stderr is not None:
            with contextlib.suppress(Exception):
                while await process.stderr.readline():
                    pass

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are skipped)."""
        assert self._ws is not None
        message_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = await self._ws.receive_json(timeout=20)
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def phone(self, width: int = 390, height: int = 844) -> None:
        """A phone's screen: narrow, high density, touch."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2,
            mobile=True,
        )

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        for _ in range(200):
            if await self.evaluate("document.readyState") == "complete":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{url} did not load")

    async def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        result = await self.send("Page.captureScreenshot", **params)
        return _write(path, base64.b64decode(result["data"]))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)


def _write(path: Path, data: bytes) -> Path:
    """A screenshot to disk (small: on the loop's thread, no executor thread left behind)."""
    path.write_bytes(data)
    return path
