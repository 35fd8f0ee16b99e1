"""Regressions from the data-path review: each case once let a request through wrongly or hang."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

from conftest import StartBalancer
from support import Backend, Balancer, raw_exchange, read_response


async def test_compressed_request_bodies_pass_as_they_came(
    balancer: Balancer, backends: list[Backend]
) -> None:
    """aiohttp would decode a gzip body and forward it under the compressed length: a way to
    smuggle a second request to the backend."""
    smuggled = b"x" * 50 + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    body = gzip.compress(smuggled)
    response = await raw_exchange(
        balancer.host_port,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
        % (len(body), body),
    )
    assert response.status == 200
    seen = [s for b in backends for s in b.seen]
    assert [s.path for s in seen] == ["/upload"]
    # The compressed bytes arrived as sent: the backend's own aiohttp decoded them.
    assert seen[0].body == smuggled
    assert seen[0].header("Content-Length") == [str(len(body))]


async def test_backend_that_stops_reading_the_body_gets_504_not_a_hang(
    balancer_factory: StartBalancer,
) -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()  # reads nothing more: the balancer's writes back up
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        balancer = await balancer_factory([f"http://127.0.0.1:{port}"], "timeouts:\n  read: 1s\n")
        reader, writer = await asyncio.open_connection(*balancer.host_port)
        size = 64 * 1024 * 1024
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        started = time.monotonic()

        async def send() -> None:
            chunk = b"z" * 65536
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()

        sending = asyncio.ensure_future(send())
        response = await read_response(reader, timeout=10)
        assert response.status == 504
        assert time.monotonic() - started < 6
        sending.cancel()
        writer.close()
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_malformed_chunked_body_is_400_not_a_hang(balancer: Balancer) -> None:
    response = await raw_exchange(
        balancer.host_port,
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        timeout=5,
    )
    assert response.status == 400


async def test_client_that_stalls_mid_upload_gets_408(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory(
        [b.url for b in backends], "timeouts:\n  client_body: 500ms\n"
    )
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"a" * 500)
        response = await read_response(reader, timeout=5)
        assert response.status == 408
    finally:
        writer.close()


async def test_chunked_body_over_max_body_is_413(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "limits:\n  max_body: 1KB\n")
    body = b"".join(b"%x\r\n%b\r\n" % (1000, b"c" * 1000) for _ in range(5)) + b"0\r\n\r\n"
    response = await raw_exchange(
        balancer.host_port,
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert response.status == 413


async def test_connect_and_absolute_form(balancer: Balancer, backends: list[Backend]) -> None:
    connect = await raw_exchange(
        balancer.host_port, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    )
    assert connect.status == 501
    mismatch = await raw_exchange(
        balancer.host_port, b"GET http://evil.example/admin HTTP/1.1\r\nHost: shop\r\n\r\n"
    )
    assert mismatch.status == 400
    assert [b.seen for b in backends] == [[], []]
    same = await raw_exchange(
        balancer.host_port, b"GET http://shop/cart?x=1 HTTP/1.1\r\nHost: shop\r\n\r\n"
    )
    assert same.status == 200
    assert backends[0].seen[0].path == "/cart?x=1"


async def test_connection_cannot_strip_host(balancer: Balancer, backends: list[Backend]) -> None:
    response = await raw_exchange(
        balancer.host_port, b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: host\r\n\r\n"
    )
    assert response.status == 200
    assert backends[0].seen[0].header("Host") == ["shop"]


async def test_http10_without_host_names_the_backend_it_goes_to(
    balancer: Balancer, backends: list[Backend]
) -> None:
    for _ in range(2):
        await raw_exchange(balancer.host_port, b"GET / HTTP/1.0\r\n\r\n")
    for backend in backends:
        assert backend.seen[0].header("Host") == [f"127.0.0.1:{backend.port}"]


async def test_oversized_head_pipelined_behind_a_small_one_is_refused(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "limits:\n  max_head: 16KB\n")
    big = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(10))
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"GET /small HTTP/1.1\r\nHost: a\r\n\r\nGET /big HTTP/1.1\r\nHost: a\r\n"
            + big
            + b"\r\n"
        )
        first = await read_response(reader)
        second = await read_response(reader)
        assert (first.status, second.status) == (200, 431)
    finally:
        writer.close()
    assert [s.path for b in backends for s in b.seen] == ["/small"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_websocket_tunnel_does_not_buffer_for_a_client_that_reads_nothing(
    balancer: Balancer, backends: list[Backend]
) -> None:
    """A backend flooding a WebSocket whose client reads nothing: the balancer stops reading
    the backend instead of buffering the flood."""
    before = rss_mb(balancer.process.pid)
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"GET /ws-flood HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        peak = before
        for _ in range(20):  # two seconds of a flood the client never reads
            await asyncio.sleep(0.1)
            peak = max(peak, rss_mb(balancer.process.pid))
        assert peak - before < 50, (before, peak)
    finally:
        writer.close()
