"""`limits.max_connections` and running out of file descriptors (SPEC §7), through the real
command and raw sockets: past the cap, connections wait in the backlog; the balancer's own
exhaustion is never held against a backend."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, read_response

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def get(connection: Connection, path: str) -> int:
    """One kept-alive request on an open connection; its status."""
    reader, writer = connection
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    await writer.drain()
    return (await read_response(reader, timeout=5)).status


async def test_connections_past_the_cap_wait_in_the_backlog(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "limits:\n  max_connections: 5\n")
    held = [await asyncio.open_connection(*balancer.host_port) for _ in range(5)]
    for connection in held:
        assert await get(connection, "/held") == 200  # accepted and served
    # The sixth connects at TCP level (the kernel's backlog) but is not accepted.
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    writer.write(b"GET /sixth HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    # Meanwhile the process keeps serving the connections it has, and the admin port.
    for connection in held:
        assert await get(connection, "/again") == 200
    async with session.get(balancer.admin_url + "/status") as response:
        assert response.status == 200
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)  # not answered while at the cap
    assert not [s for b in backends for s in b.seen if s.path == "/sixth"]
    held[0][1].close()  # one closes: the sixth is accepted and served
    response = await read_response(reader, timeout=5)
    assert response.status == 200
    assert json.loads(response.body)["path"] == "/sixth"
    writer.close()
    for _, other in held[1:]:
        other.close()


async def admin_backends(admin: Connection) -> list[tuple[str, str]]:
    """(state, breaker) of each backend, from /status over a kept-alive admin connection."""
    reader, writer = admin
    writer.write(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    status = json.loads((await read_response(reader, timeout=5)).body)
    return [(b["state"], b["breaker"]) for b in status["backends"]]
