"""`limits.max_connections` and running out of file descriptors (SPEC §7), through the real
command and raw sockets: past the cap, connections wait in the backlog; the balancer's own
exhaustion is never held against a backend."""

from __future__ import annotations

import asyncio
import json
import resource

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, eventually, raw_exchange, read_response

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
BACKENDS = ("b0", "b1")


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


def low_fd_limit() -> None:
    """In the balancer's process: 64 fds, soft = hard, so raising soft to hard gains none."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


async def test_running_out_of_fds_is_not_held_against_the_backends(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    """19.7k idle clients once brought the process to its fd limit: health probes failed with
    EMFILE and both backends were marked down. They must stay healthy, their breakers closed,
    and the balancer must serve again once the clients go."""
    extra = """
    limits: {max_connections: 1000}
    timeouts: {client_header: 60s}
    health_check: {interval: 100ms, timeout: 1s, fall: 1}
    circuit_breaker: {failure_threshold: 1}
    """
    balancer = await balancer_factory([b.url for b in backends], extra, preexec_fn=low_fd_limit)
    host, port = balancer.admin_url.removeprefix("http://").rsplit(":", 1)
    admin = await asyncio.open_connection(host, int(port))  # kept: no fd is needed for it later
    client = await asyncio.open_connection(*balancer.host_port)  # accepted while fds remain
    await eventually(lambda: backends[0].probes and backends[1].probes)
    assert await admin_backends(admin) == [("healthy", "closed"), ("healthy", "closed")]

    idle = [await asyncio.open_connection(*balancer.host_port) for _ in range(80)]
    await eventually(lambda: "cannot accept client connections" in balancer.stderr())

    # Several health intervals with no fd for a probe: each one skipped, none failed.

    def skipped_several_times() -> bool:
        log = balancer.stderr()
        assert "is unhealthy" not in log, "a backend was marked down for the balancer's own fds"
        return all(log.count(f"health check of {b} skipped") >= 5 for b in BACKENDS)

    await eventually(skipped_several_times, timeout=10)
    assert await admin_backends(admin) == [("healthy", "closed"), ("healthy", "closed")]
    # A request that finds no fd for a backend connection: 503, the balancer's fault, not 502.
    reader, writer = client
    writer.write(b"GET /no-fd HTTP/1.1\r\nHost: a\r\n\r\n")
    response = await read_response(reader, timeout=5)
    assert response.status == 503
    assert response.header("Retry-After")
    assert await admin_backends(admin) == [("healthy", "closed"), ("healthy", "closed")]
    assert "is unhealthy" not in balancer.stderr()

    for _, other in idle:
        other.close()
    writer.close()

    async def served() -> bool:
        try:
            answer = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False
        return answer.status == 200

    await eventually(served, timeout=10)
    await eventually(lambda: "accepting client connections again" in balancer.stderr())
    admin[1].close()


async def admin_backends(admin: Connection) -> list[tuple[str, str]]:
    """(state, breaker) of each backend, from /status over a kept-alive admin connection."""
    reader, writer = admin
    writer.write(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    status = json.loads((await read_response(reader, timeout=5)).body)
    return [(b["state"], b["breaker"]) for b in status["backends"]]


async def test_the_soft_fd_limit_is_raised_to_the_hard_one(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    def soft_64_hard_4096() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))

    balancer = await balancer_factory([b.url for b in backends], preexec_fn=soft_64_hard_4096)
    await eventually(lambda: "RLIMIT_NOFILE soft 64 -> 4096 (hard 4096)" in balancer.stderr())
    assert resource.prlimit(balancer.process.pid, resource.RLIMIT_NOFILE) == (4096, 4096)
