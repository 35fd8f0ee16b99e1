"""A client that goes away must not leak anything: the in-flight count, the upstream
connection, memory. Each test's docstring states the invariant; all run the real `balancer`
command against real backends ("a cancelled client must still release
in-flight counts and the upstream connection")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.web_protocol import RequestHandler

from conftest import StartBalancer
from support import Backend, Balancer, eventually, json_get, read_response

MB = 1024 * 1024


async def backend_status(session: aiohttp.ClientSession, balancer: Balancer) -> dict[str, Any]:
    status = await json_get(session, balancer.admin_url + "/status")
    [backend] = status["backends"]
    return backend  # type: ignore[no-any-return]


async def in_flight_is(session: aiohttp.ClientSession, balancer: Balancer, n: int) -> bool:
    return bool((await backend_status(session, balancer))["in_flight"] == n)


def upstream_connection(backend: Backend, peer_port: int) -> RequestHandler:
    """The backend's side of the balancer's connection that came from `peer_port`."""
    server = backend.runner.server
    assert server is not None
    [handler] = [h for h in server.connections if (h.peername or ("", 0))[1] == peer_port]
    return handler


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def still_serves(session: aiohttp.ClientSession, balancer: Balancer, n: int = 3) -> None:
    for _ in range(n):
        async with session.get(balancer.url + "/after") as response:
            assert response.status == 200
            assert (await response.json())["path"] == "/after"


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_gone_while_the_backend_works(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    how: str,
) -> None:
    """A client that disconnects (FIN or RST) while its backend is still working releases
    the in-flight count at once, not when the backend answers; the upstream connection is
    closed, not pooled (a late answer on it would be taken for the next request's); and
    the departure is not counted as a backend failure."""
    backend = backends[0]
    balancer = await balancer_factory([backend.url])
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    writer.write(b"GET /slow?delay=4 HTTP/1.1\r\nHost: app\r\n\r\n")
    await writer.drain()
    await eventually(lambda: [s.path for s in backend.seen] == ["/slow?delay=4"])
    await eventually(lambda: in_flight_is(session, balancer, 1))
    upstream = upstream_connection(backend, backend.seen[0].peer_port)
    assert upstream.transport is not None

    if how == "abort":
        writer.transport.abort()
    else:
        writer.close()
    # Well before the backend's 4 s are up.
    await eventually(lambda: in_flight_is(session, balancer, 0), timeout=2.5)
    await eventually(lambda: upstream.transport is None, timeout=2.5)

    await still_serves(session, balancer)
    assert {s.peer_port for s in backend.seen[1:]}.isdisjoint({backend.seen[0].peer_port})
    status = await backend_status(session, balancer)
    assert status["failures_total"] == 0
    assert status["attempts_total"] == 4
    assert status["state"] == "healthy"
    del reader


async def test_client_gone_mid_download(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
) -> None:
    """A client that stops reading a large streamed response and then disconnects: while it
    does not read, the balancer stops reading the backend (memory stays flat, not 200 MB);
    once it is gone the in-flight count goes back to 0, the backend connection is closed,
    and the balancer keeps serving."""
    backend = backends[0]
    balancer = await balancer_factory([backend.url])
    pid = balancer.process.pid
    await still_serves(session, balancer, 1)
    baseline = rss_bytes(pid)

    reader, writer = await asyncio.open_connection(*balancer.host_port)
    writer.write(b"GET /stream?size=200000000 HTTP/1.1\r\nHost: app\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        received = 0
        while received < MB:
            received += len(await reader.read(65536))
    await eventually(lambda: in_flight_is(session, balancer, 1))
    upstream = upstream_connection(backend, backend.seen[-1].peer_port)

    # The client reads nothing for a while: a balancer without backpressure would buffer
    # the backend's ~1 GB/s over loopback. Sample its memory over that window.
    samples = []
    for _ in range(15):
        samples.append(rss_bytes(pid))
        await asyncio.sleep(0.1)
    assert max(samples) - baseline < 50 * MB, [s // MB for s in samples]

    writer.transport.abort()
    await eventually(lambda: in_flight_is(session, balancer, 0))
    await eventually(lambda: upstream.transport is None)
    await still_serves(session, balancer)
    assert rss_bytes(pid) - baseline < 50 * MB
    status = await backend_status(session, balancer)
    assert status["failures_total"] == 0


async def test_client_gone_mid_upload(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
) -> None:
    """A client that announces a 10 MB body, sends 1 MB of it and disconnects: the in-flight
    count goes back to 0, the half-sent request's backend connection is closed (never
    reused with a body missing), the backend is not blamed, and the balancer keeps serving."""
    backend = backends[0]
    balancer = await balancer_factory([backend.url])
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    writer.write(
        b"POST /sink HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % (10 * MB) + b"u" * MB
    )
    await writer.drain()
    await eventually(lambda: [s.path for s in backend.seen] == ["/sink"])
    await eventually(lambda: in_flight_is(session, balancer, 1))
    upstream = upstream_connection(backend, backend.seen[0].peer_port)

    writer.close()
    await eventually(lambda: in_flight_is(session, balancer, 0))
    await eventually(lambda: upstream.transport is None)
    await still_serves(session, balancer)
    assert {s.peer_port for s in backend.seen[1:]}.isdisjoint({backend.seen[0].peer_port})
    status = await backend_status(session, balancer)
    assert status["failures_total"] == 0
    assert status["attempts_total"] == 4
    del reader


async def test_a_completed_request_leaves_nothing_in_flight(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
) -> None:
    """The control case for the tests above: a client that stays to the end leaves the
    in-flight count at 0 and its upstream connection pooled (reused by the next request)."""
    backend = backends[0]
    balancer = await balancer_factory([backend.url])
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        for _ in range(2):
            writer.write(b"GET /slow?delay=0.1 HTTP/1.1\r\nHost: app\r\n\r\n")
            response = await read_response(reader)
            assert response.status == 200
    finally:
        writer.close()
    assert await in_flight_is(session, balancer, 0)
    assert backend.seen[0].peer_port == backend.seen[1].peer_port
