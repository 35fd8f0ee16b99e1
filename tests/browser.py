"""A headless Chromium for the dashboard's tests, driven over the Chrome DevTools protocol
(CDP) with aiohttp's websocket client: no browser-automation package, only the browser.

`Chromium.start` runs it on a fresh profile with `--remote-debugging-port=0` and reads the
port it took from `DevToolsActivePort`; `Page` is one tab: navigate, evaluate JavaScript,
click and type as input events (what a user does, not a call into the page's own code),
and take a screenshot. The events the page raises (uncaught exceptions, console and log
entries: a CSP violation is one) are kept for the test to check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from support import eventually

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        if found := shutil.which(name):
            return found
    return None


class CDPError(RuntimeError):
    pass


@dataclass
class Page:
    """One tab, on its own DevTools websocket."""

    socket: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        future.set_result(data)
                else:
                    self.events.append(data)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CDPError("the DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.socket.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(15):
            answer = await future
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        """Open `url` and wait until its page has loaded (its deferred script has run)."""
        await self.send("Page.navigate", url=url)
        await self.loaded(url)

    async def reload(self) -> None:
        url = await self.evaluate("location.href")
        await self.send("Page.reload")
        await self.loaded(url)

    async def loaded(self, url: str) -> None:
        # A fresh evaluation each time: across the navigation, it runs in the new document.
        expression = f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        await eventually(lambda: self.evaluate(expression), timeout=15)

    async def center_of(self, element: str) -> tuple[float, float] | None:
        """Where `element` (a JavaScript expression) is on screen, scrolled into view; None
        while it is missing, hidden or disabled."""
        where = await self.evaluate(
            f"""(() => {{
                const e = {element};
                if (!e || e.disabled || e.offsetParent === null) return null;
                e.scrollIntoView({{block: "center"}});
                const r = e.getBoundingClientRect();
                return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        return None if where is None else (float(where[0]), float(where[1]))

    async def click(self, element: str, timeout: float = 10.0) -> None:
        """A left click in the middle of `element`, once it is there and enabled."""
        x, y = await eventually(lambda: self.center_of(element), timeout=timeout)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type_text(self, text: str) -> None:
        """Text into the focused element, as a keyboard's input would put it."""
        await self.send("Input.insertText", text=text)

    async def screenshot(self) -> bytes:
        """The whole page as PNG, however long it is."""
        size = await self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        shot = await self.send(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        return base64.b64decode(shot["data"])

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and CSP violations the page raised so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                text = str(entry.get("text", ""))
                # The network's: a 401 asks for the token, a 404 hides a part (and the
                # browser asks for /favicon.ico on its own); the page reads those answers.
                if entry.get("source") == "network":
                    continue
                if entry.get("level") == "error" or "Content Security Policy" in text:
                    found.append(f"{entry.get('source')}: {text}")
        return found


class Chromium:
    """A headless Chromium process on a throwaway profile."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.client = aiohttp.ClientSession()
        self.pages: list[Page] = []

    @classmethod
    async def start(cls, executable: str, directory: Path) -> Chromium:
        profile = directory / "chromium-profile"
        profile.mkdir()
        arguments = [
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--password-store=basic",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
        ]
        if os.geteuid() == 0:
            arguments.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        log = (directory / "chromium.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            executable,
            *arguments,
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its helpers in one process group, ended with it
        )
        log.close()
        port_file = profile / "DevToolsActivePort"

        def port() -> int | None:
            if process.returncode is not None:
                raise AssertionError(f"chromium exited: {(directory / 'chromium.log').read_text()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(port_file.read_text().split()[0])
            return None

        try:
            return cls(process, await eventually(port, timeout=30, interval=0.05))
        except BaseException:
            _kill_group(process)
            await process.wait()
            raise

    async def page(self) -> Page:
        """The tab Chromium opened, its domains enabled."""

        async def targets() -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{self.port}/json/list"
            async with self.client.get(url) as response:
                listed: list[dict[str, Any]] = await response.json()
            return [t for t in listed if t.get("type") == "page"]

        target = (await eventually(targets, timeout=10))[0]
        socket = await self.client.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(socket)
        page.start()
        self.pages.append(page)
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page

    async def stop(self) -> None:
        for page in self.pages:
            await page.socket.close()
            if page._reader is not None:
                await asyncio.gather(page._reader, return_exceptions=True)
        await self.client.close()
        if self.process.returncode is None:  # its group, while its pid is still its own
            _signal_group(self.process, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                _kill_group(self.process)
        await self.process.wait()


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    """The browser and its helpers (its own process group, start_new_session); only while
    the browser is not yet reaped, so the group id is still the browser's."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    _signal_group(process, signal.SIGKILL)
