"""Holes a hostile client (or an odd backend) could use, each closed through the real command:
trailers, stalled uploads, bad Host values, stale pooled connections, bytes after
`Connection: close`, pipelining behind h2c, idle tunnels (issue 13)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, json_get, raw_exchange, read_response, start_raw_backend

TRAILERS = b"X-Other: 2\r\nAuthorization: Bearer attacker\r\n"
CHUNKED_POST = (
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    + TRAILERS
    + b"\r\n"
)


def _leaked(backends: list[Backend]) -> list[str]:
    """Paths of requests that arrived carrying a field of the attacker's trailer section."""
    return [
        s.path for b in backends for s in b.seen if s.header("X-Other") or s.header("Authorization")
    ]


async def test_request_trailers_never_reach_a_pipelined_request(
    balancer: Balancer, backends: list[Backend]
) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(CHUNKED_POST + b"GET /victim HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader)
        assert first.status == 200
        assert json.loads(first.body)["body_length"] == 5
        # What followed the trailer in the same read is never forwarded: the connection
        # closes after the chunked request's answer (the client may retry it).
        assert await reader.read() == b""
    finally:
        writer.close()
    assert _leaked(backends) == []
    assert [s.path for b in backends for s in b.seen] == ["/x"]


async def test_request_trailers_never_reach_the_next_client_on_a_reused_connection(
    balancer: Balancer, backends: list[Backend]
) -> None:
    """As behind a front proxy that reuses one connection for several users (HAProxy's
    http-reuse, which forwards trailers): the next request on it comes in a later read."""
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        for attacker_turn in range(3):
            writer.write(CHUNKED_POST)
            assert (await read_response(reader)).status == 200
            writer.write(b"GET /victim%d HTTP/1.1\r\nHost: a\r\n\r\n" % attacker_turn)
            victim = await read_response(reader)
            assert victim.status == 200
    finally:
        writer.close()
    assert _leaked(backends) == []
    victims = [s for b in backends for s in b.seen if s.path.startswith("/victim")]
    assert len(victims) == 3  # and the connection stayed alive for all of them


async def test_a_chunked_request_without_trailers_keeps_its_connection(
    balancer: Balancer,
) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        for _ in range(2):
            writer.write(
                b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
            )
            assert (await read_response(reader)).status == 200
    finally:
        writer.close()


async def test_a_chunked_end_split_across_reads_keeps_its_connection(balancer: Balancer) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        for piece in (
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r",
            b"\n\r",
            b"\n",
        ):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # separate reads on the balancer's side (the scenario)
        assert (await read_response(reader)).status == 200
        writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()


async def test_response_trailers_never_become_header_fields(
    balancer_factory: StartBalancer,
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n"
        b"5\r\nhello\r\n0\r\nSet-Cookie: injected=1\r\nX-Trailer: t\r\n\r\n"
    )

    backend = await start_raw_backend(answer)  # the whole response in one write
    try:
        balancer = await balancer_factory([backend.url])
        response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        await backend.stop()
    assert response.status == 200
    assert response.body == b"hello"
    assert response.header("Set-Cookie") == []
    assert response.header("X-Trailer") == []
    assert response.header("Trailer") == []


async def test_stalled_uploads_are_408_and_never_take_a_backend_out(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory(
        [b.url for b in backends],
        """
        timeouts: {read: 300ms, client_body: 1500ms}
        circuit_breaker: {failure_threshold: 2}
        """,
    )
    connections = [await asyncio.open_connection(*balancer.host_port) for _ in range(6)]
    try:
        started = time.monotonic()
        for _, writer in connections:
            writer.write(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        answers = [await read_response(reader, timeout=10) for reader, _ in connections]
        assert [a.status for a in answers] == [408] * 6  # the client's stall, not a 504
        assert time.monotonic() - started >= 1.4
    finally:
        for _, writer in connections:
            writer.close()
    async with aiohttp.ClientSession() as session:
        status = await json_get(session, balancer.admin_url + "/status")
        for backend in status["backends"]:
            assert backend["breaker"] == "closed"
            assert backend["failures_total"] == 0
        async with session.get(balancer.url + "/after") as response:
            assert response.status == 200


@pytest.mark.parametrize("host", [b"x, evil", b"x y", b"x/evil", b"user@x", b"x:8o", b"a?b"])
async def test_invalid_host_is_400_and_never_forwarded(
    balancer: Balancer, backends: list[Backend], host: bytes
) -> None:
    response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
    assert response.status == 400
    assert [s for b in backends for s in b.seen] == []


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"[::1]:8080", b"10.0.0.1"])
async def test_valid_hosts_pass(balancer: Balancer, backends: list[Backend], host: bytes) -> None:
    response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
    assert response.status == 200
    seen = [s for b in backends for s in b.seen]
    assert seen[0].header("Host") == [host.decode()]
    assert seen[0].header("X-Forwarded-Host") == [host.decode()]


async def test_underscore_transfer_encoding_never_frames(
    balancer: Balancer, backends: list[Backend]
) -> None:
    """A field named Transfer_Encoding is not Transfer-Encoding: the body is the
    Content-Length's, and the request pipelined behind it is a request of its own."""
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n0\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first = await read_response(reader)
        second = await read_response(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 200)
    seen = sorted((s for b in backends for s in b.seen), key=lambda s: s.path)
    assert [s.path for s in seen] == ["/first", "/second"]
    assert seen[0].body == b"0\r\n\r\n"
    assert seen[0].header("Content-Length") == ["5"]
    assert seen[0].header("Transfer-Encoding") == []


async def test_response_with_underscore_transfer_encoding_is_framed_by_its_length(
    balancer_factory: StartBalancer,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"

    backend = await start_raw_backend(answer)  # the whole response in one write
    try:
        balancer = await balancer_factory([backend.url])
        response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        await backend.stop()
    assert response.status == 200
    assert response.body == b"0\r\n\r\n"
    assert response.header("Transfer-Encoding") == []


class StaleBackend:
    """Answers the first request on each connection, then closes the connection when the
    next one arrives on it without answering: a backend that timed the idle connection out
    just as the balancer reused it."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the reuse: closed unanswered
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_stale_pooled_connection_is_retried_fresh_and_not_a_failure(
    balancer_factory: StartBalancer,
) -> None:
    backend = StaleBackend()
    url = await backend.start()
    try:
        balancer = await balancer_factory(
            [url], "retries: 0\ncircuit_breaker: {failure_threshold: 1}\n"
        )
        async with aiohttp.ClientSession() as session:
            for _ in range(4):
                async with session.get(balancer.url + "/") as response:
                    assert response.status == 200
            # A POST is not replayed (it may have been acted on), but it does not count
            # against the backend either.
            async with session.post(balancer.url + "/p") as response:
                assert response.status == 502
            status = await json_get(session, balancer.admin_url + "/status")
            assert status["backends"][0]["breaker"] == "closed"
            assert status["backends"][0]["failures_total"] == 0
            async with session.get(balancer.url + "/") as response:
                assert response.status == 200
    finally:
        await backend.stop()
    assert backend.requests == 6


async def test_upstream_idle_bounds_how_long_a_pooled_connection_is_reused(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([backends[0].url], "timeouts: {upstream_idle: 100ms}\n")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(balancer.url + "/") as response:
                assert response.status == 200
            await asyncio.sleep(0.3)  # idle longer than upstream_idle (the scenario itself)
    ports = {s.peer_port for s in backends[0].seen}
    assert len(ports) == 3


async def test_connection_close_with_bytes_behind_it_is_answered(
    balancer: Balancer, backends: list[Backend]
) -> None:
    for tail in (b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", b"JUNK\r\n\r\n", b"x"):
        reader, writer = await asyncio.open_connection(*balancer.host_port)
        try:
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + tail)
            response = await read_response(reader)
            assert response.status == 200
            assert response.header("Connection") == ["close"]
            assert await reader.read() == b""  # closed, the rest ignored (RFC 9112 9.6)
        finally:
            writer.close()
    assert [s.path for b in backends for s in b.seen] == ["/a", "/a", "/a"]


async def test_requests_before_a_connection_close_in_one_read_are_answered(
    balancer: Balancer, backends: list[Backend]
) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        one = await read_response(reader)
        two = await read_response(reader)
        assert await reader.read() == b""
    finally:
        writer.close()
    assert (one.status, two.status) == (200, 200)
    assert json.loads(one.body)["body_length"] == 3
    assert sorted(s.path for b in backends for s in b.seen) == ["/one", "/two"]


async def test_request_pipelined_behind_h2c_upgrade_is_answered(
    balancer: Balancer, backends: list[Backend]
) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first = await read_response(reader)
        second = await read_response(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 200)
    assert b'"path": "/second"' in second.body
    assert sorted(s.path for b in backends for s in b.seen) == ["/first", "/second"]
    assert all(s.header("Upgrade") == [] for b in backends for s in b.seen)


async def test_idle_websocket_tunnel_is_closed_after_tunnel_idle(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "timeouts: {tunnel_idle: 1s}\n")
    async with session.ws_connect(balancer.url + "/ws") as ws:
        await ws.send_str("hello")
        assert (await asyncio.wait_for(ws.receive(), 5)).data.endswith("hello")
        # Traffic keeps it open past tunnel_idle...
        for _ in range(3):
            await asyncio.sleep(0.5)
            await ws.send_str("ping")
            assert (await asyncio.wait_for(ws.receive(), 5)).data.endswith("ping")
        # ...silence closes it.
        started = time.monotonic()
        message = await asyncio.wait_for(ws.receive(), 10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert 0.5 <= time.monotonic() - started < 5
