"""What the functional tests share: real backends on port 0, the real `balancer` command,
raw sockets, and `eventually` (wait for a condition with a deadline, never a bare sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

LISTENING = re.compile(r"(proxy|admin) listening on (http://\S+)")


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------
# Backends


@dataclass
class Seen:
    method: str
    path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    peer_port: int = 0

    def header(self, name: str) -> list[str]:
        lname = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.raw_headers if n.lower() == lname]


@dataclass
class Backend:
    name: str
    url: str
    port: int
    runner: web.AppRunner
    seen: list[Seen] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def probes(self) -> int:
        """Health probes answered so far (they are not in `seen`)."""
        return int(self.health.get("probes", 0))

    def set_healthy(self, healthy: bool) -> None:
        self.health["status"] = 200 if healthy else 503

    def set_delay(self, seconds: float) -> None:
        """Make the catch-all route this much slower."""
        self.health["delay"] = seconds

    async def stop(self) -> None:
        await self.runner.cleanup()


async def _read_body(request: web.Request) -> bytes:
    return await request.read()


def backend_app(name: str, seen: list[Seen], health: dict[str, Any]) -> web.Application:
    async def record(request: web.Request) -> Seen:
        body = b""
        if request.path != "/sink":
            body = await _read_body(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        entry = Seen(
            request.method,
            request.raw_path,
            list(request.raw_headers),
            body,
            peer[1] if peer else 0,
        )
        seen.append(entry)
        return entry

    async def echo(request: web.Request) -> web.StreamResponse:
        entry = await record(request)
        if delay := health.get("delay"):
            await asyncio.sleep(delay)
        return web.json_response(
            {
                "backend": name,
                "method": entry.method,
                "path": entry.path,
                "body_length": len(entry.body),
                "headers": [
                    [n.decode("latin-1"), v.decode("latin-1")] for n, v in entry.raw_headers
                ],
            },
            headers={"X-Backend": name},
        )

    async def status(request: web.Request) -> web.Response:
        await record(request)
        code = int(request.match_info["code"])
        return web.Response(
            status=code,
            text="" if code in (204, 304) else f"status {code}\n",
            headers={"X-Backend": name},
        )

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text=f"slow {name}\n", headers={"X-Backend": name})

    async def stream(request: web.Request) -> web.StreamResponse:
        await record(request)
        size = int(request.query.get("size", "1000000"))
        response = web.StreamResponse(headers={"X-Backend": name})
        if request.query.get("length"):
            response.content_length = size
        await response.prepare(request)
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def sink(request: web.Request) -> web.Response:
        await record(request)
        total = 0
        async for data in request.content.iter_any():
            total += len(data)
        return web.Response(text=str(total), headers={"X-Backend": name})

    async def cookies(request: web.Request) -> web.Response:
        await record(request)
        response = web.Response(text="cookies\n", headers={"X-Backend": name})
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    async def login(request: web.Request) -> web.Response:
        entry = await record(request)
        response = web.Response(text="logged in\n", headers={"X-Backend": name})
        response.headers.add("Set-Cookie", "theme=dark; Path=/")
        response.headers.add("Set-Cookie", f"sid={name}-{len(seen)}; Path=/; HttpOnly")
        del entry
        return response

    async def drop(request: web.Request) -> web.Response:
        await record(request)
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError

    async def ws_flood(request: web.Request) -> web.WebSocketResponse:
        await record(request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        frame = b"f" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(int(request.query.get("frames", "3000"))):  # 3000 x 64 KiB: 200 MB
                await socket.send_bytes(frame)  # waits while the balancer does not read
            await socket.close()
        return socket

    async def ws(request: web.Request) -> web.WebSocketResponse:
        await record(request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str(f"{name}: {message.data}")
        return socket

    async def health_check(request: web.Request) -> web.Response:
        health["probes"] = health.get("probes", 0) + 1
        code = health.get("status", 200)
        return web.json_response({"cpu": 0.25, "memory": 0.5}, status=code)

    app = web.Application()
    app.router.add_get("/health", health_check)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_post("/sink", sink)
    app.router.add_get("/cookies", cookies)
    app.router.add_post("/login", login)
    app.router.add_route("*", "/drop", drop)
    app.router.add_get("/ws", ws)
    app.router.add_get("/ws-flood", ws_flood)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_backend(name: str, port: int = 0) -> Backend:
    """An aiohttp backend on `port` (0: a free one); start it again on its old port to
    bring a stopped backend back."""
    seen: list[Seen] = []
    health: dict[str, Any] = {}
    runner = web.AppRunner(backend_app(name, seen, health), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    return Backend(name, f"http://127.0.0.1:{port}", port, runner, seen, health)


# ---------------------------------------------------------------------------------------
# The balancer, as the real command


@dataclass
class Balancer:
    process: asyncio.subprocess.Process
    url: str
    admin_url: str
    stdout_lines: list[str]
    stderr_path: Path

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        assert self.process.returncode is not None
        return self.process.returncode


def config_yaml(backends: list[str], extra: str = "") -> str:
    lines = "\n".join(f"  - url: {url}\n    name: {name}" for name, url in _named(backends))
    return (
        "listen: 127.0.0.1:0\nlog_level: debug\nadmin:\n  listen: 127.0.0.1:0\n"
        f"backends:\n{lines}\n" + textwrap.dedent(extra)
    )


def _named(urls: list[str]) -> list[tuple[str, str]]:
    return [(f"b{i}", url) for i, url in enumerate(urls)]


def balancer_command() -> list[str]:
    return [sys.executable, "-m", "balancer"]


async def start_balancer(
    tmp_path: Path,
    backends: list[str],
    extra: str = "",
    *,
    config_text: str | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Balancer:
    """The real command on `tmp_path`/balancer.yaml; `preexec_fn` runs in the child before it
    starts (to set an rlimit, say)."""
    config = tmp_path / "balancer.yaml"
    config.write_text(config_text if config_text is not None else config_yaml(backends, extra))
    stderr_path = tmp_path / "balancer.stderr"
    stderr = stderr_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        *balancer_command(),
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )
    stderr.close()
    lines: list[str] = []
    urls: dict[str, str] = {}
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            while "proxy" not in urls or "admin" not in urls:
                raw = await process.stdout.readline()
                if not raw:
                    raise AssertionError(f"balancer exited: {stderr_path.read_text()}")
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if match := LISTENING.search(line):
                    urls[match.group(1)] = match.group(2)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return Balancer(process, urls["proxy"], urls["admin"], lines, stderr_path)


# ---------------------------------------------------------------------------------------
# Raw HTTP on a socket, for what a client library would hide or refuse to send


@dataclass
class RawResponse:
    status: int
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def parse_head(head: bytes) -> tuple[str, int, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[:2]
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return version, int(status), headers


async def read_response(
    reader: asyncio.StreamReader, *, head_request: bool = False, timeout: float = 10.0
) -> RawResponse:
    async with asyncio.timeout(timeout):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            version, status, headers = parse_head(head)
            if not (100 <= status < 200 and status != 101):
                break
        response = RawResponse(status, version, headers, b"", head)
        if head_request or status in (204, 304, 101):
            return response
        if lengths := response.header("Content-Length"):
            response.body = await reader.readexactly(int(lengths[0]))
        elif "chunked" in ",".join(response.header("Transfer-Encoding")).lower():
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            response.body = bytes(body)
        else:
            response.body = await reader.read()
        return response


async def raw_exchange(
    host_port: tuple[str, int], data: bytes, *, head_request: bool = False, timeout: float = 10.0
) -> RawResponse:
    reader, writer = await asyncio.open_connection(*host_port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, head_request=head_request, timeout=timeout)
    finally:
        writer.close()


async def json_get(session: Any, url: str) -> Any:
    async with session.get(url) as response:
        return json.loads(await response.text())


# ---------------------------------------------------------------------------------------
# A backend that answers with raw bytes, for misbehaviour aiohttp would not produce


@dataclass
class RawBackend:
    url: str
    server: asyncio.base_events.Server
    requests: list[bytes] = field(default_factory=list)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_raw_backend(answer: bytes, *, close: bool = True) -> RawBackend:
    """Reads one request head per connection, writes `answer`, then closes (or waits)."""
    backend: RawBackend

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                backend.requests.append(head)
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = RawBackend(f"http://127.0.0.1:{port}", server)
    return backend


# ---------------------------------------------------------------------------------------
# A real redis-server on a free port, killed and restarted by fault tests


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)  # polling a process that is starting, with a deadline
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------
# Workers


async def fresh_get(url: str) -> tuple[int, str]:
    """One request on a connection of its own, so that either worker may accept it."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as client,
        client.get(url, headers={"Connection": "close"}) as response,
    ):
        return response.status, await response.text()


async def status(balancer: Balancer) -> dict[str, Any]:
    status_code, text = await fresh_get(balancer.admin_url + "/status")
    assert status_code == 200, text
    return dict(json.loads(text))


def pids(answer: dict[str, Any]) -> list[int]:
    return [worker["pid"] for worker in answer["workers"]]
