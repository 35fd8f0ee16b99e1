"""SPEC §4 through real sockets: real aiohttp backends, the real `balancer` command."""

from __future__ import annotations

import asyncio
import io
import socket

import aiohttp

from support import Backend, Balancer, raw_exchange, read_response


def closed_port_url() -> str:
    """A loopback URL where nothing listens (bound, then closed: connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_round_robin_alternates_between_backends(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    names = []
    for _ in range(6):
        async with session.get(balancer.url + "/") as response:
            assert response.status == 200
            names.append(response.headers["X-Backend"])
    assert names == ["b0", "b1"] * 3


async def test_method_raw_path_and_query_pass_unchanged(
    balancer: Balancer, backends: list[Backend]
) -> None:
    target = "/a%2Fb/./c/../d;x?q=%20a+b&q=2&empty"
    response = await raw_exchange(
        balancer.host_port,
        f"PATCH {target} HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n".encode(),
    )
    assert response.status == 200
    seen = backends[0].seen[-1]
    assert (seen.method, seen.path) == ("PATCH", target)


async def test_forwarded_headers_and_host(balancer: Balancer, backends: list[Backend]) -> None:
    response = await raw_exchange(
        balancer.host_port,
        b"GET / HTTP/1.1\r\nHost: shop.example:8443\r\nX-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    assert response.status == 200
    seen = backends[0].seen[-1]
    assert seen.header("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["shop.example:8443"]
    assert seen.header("Host") == ["shop.example:8443"]


async def test_hop_by_hop_headers_are_not_forwarded(
    balancer: Balancer, backends: list[Backend]
) -> None:
    response = await raw_exchange(
        balancer.host_port,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
        b"Trailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
    )
    assert response.status == 200
    seen = backends[0].seen[-1]
    names = {n.decode().lower() for n, _ in seen.raw_headers}
    for hop in ("x-private", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
        assert hop not in names
    assert seen.header("Connection") in ([], ["keep-alive"])  # only what the balancer itself sends
    assert seen.header("X-Kept") == ["yes"]


async def test_large_bodies_stream_both_ways(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    size = 20 * 1024 * 1024

    async def produce() -> object:
        chunk = b"y" * 65536
        for _ in range(size // len(chunk)):
            yield chunk

    async with session.post(balancer.url + "/sink", data=produce()) as response:  # chunked
        assert response.status == 200
        assert int(await response.text()) == size
    async with session.post(
        balancer.url + "/sink", data=io.BytesIO(b"z" * size)
    ) as response:  # length
        assert int(await response.text()) == size
    for query in ("", "&length=1"):
        async with session.get(f"{balancer.url}/stream?size={size}{query}") as response:
            received = 0
            async for data in response.content.iter_any():
                received += len(data)
            assert received == size
            if query:
                assert response.headers["Content-Length"] == str(size)
            else:
                assert response.headers["Transfer-Encoding"] == "chunked"


async def test_set_cookie_lines_stay_separate_and_never_leak(
    balancer: Balancer, backends: list[Backend]
) -> None:
    response = await raw_exchange(balancer.host_port, b"GET /cookies HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.header("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    await raw_exchange(balancer.host_port, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    await raw_exchange(balancer.host_port, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    for backend in backends:
        for seen in backend.seen:
            assert seen.header("Cookie") == []


async def test_authorization_is_not_kept_between_clients(
    balancer: Balancer, backends: list[Backend]
) -> None:
    await raw_exchange(
        balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n\r\n"
    )
    await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    authorised = [s.header("Authorization") for b in backends for s in b.seen]
    assert sorted(authorised) == [[], [], ["Bearer x"]]


async def test_websocket_upgrade_is_tunnelled(
    balancer: Balancer, session: aiohttp.ClientSession, backends: list[Backend]
) -> None:
    async with session.ws_connect(balancer.url + "/ws") as ws:
        await ws.send_str("hello")
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.data == "b0: hello"
        await ws.send_str("again")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "b0: again"
    seen = backends[0].seen[-1]
    assert seen.header("Upgrade") == ["websocket"]


async def test_request_pipelined_behind_a_declined_upgrade_is_answered(
    balancer: Balancer, backends: list[Backend]
) -> None:
    # The backend answers a WebSocket upgrade with a plain 200 (it declines). The front's
    # parser stopped at the upgrade; the bytes behind it (a second request) must be parsed
    # and answered once the first answer went out.
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first = await read_response(reader)
        second = await read_response(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 200)
    assert [s.path for s in backends[0].seen + backends[1].seen] == ["/first", "/second"]
    assert b'"path": "/second"' in second.body


async def test_expect_100_continue(balancer: Balancer) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(
            b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        response = await read_response(reader)
        assert response.status == 200
        assert response.body == b"5"
    finally:
        writer.close()


async def test_http10_client_gets_http10_framing(balancer: Balancer) -> None:
    response = await raw_exchange(balancer.host_port, b"GET /stream?size=100000 HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.header("Transfer-Encoding") == []
    assert len(response.body) == 100000


async def test_http11_request_without_host_is_400(
    balancer: Balancer, backends: list[Backend]
) -> None:
    response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\n\r\n")
    assert response.status == 400
    assert backends[0].seen == [] and backends[1].seen == []


async def test_head_204_304_have_no_body(balancer: Balancer) -> None:
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        for request, status in (
            (b"HEAD /stream?size=5000&length=1 HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            (b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n", 204),
            (b"GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n", 304),
            (b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n", 200),  # the connection is still in sync
        ):
            writer.write(request)
            response = await read_response(reader, head_request=request.startswith(b"HEAD"))
            assert response.status == status
            if request.startswith(b"HEAD"):
                assert response.header("Content-Length") == ["5000"]
        assert b'"path": "/after"' in response.body
    finally:
        writer.close()


async def test_backend_connections_are_kept_alive(
    balancer: Balancer, backends: list[Backend], session: aiohttp.ClientSession
) -> None:
    for _ in range(20):
        async with session.get(balancer.url + "/") as response:
            assert response.status == 200
    # One client at a time: each backend sees one balancer connection, reused.
    for backend in backends:
        assert len(backend.seen) == 10
        assert len({s.peer_port for s in backend.seen}) == 1
    status = await (await session.get(balancer.admin_url + "/status")).json()
    assert sum(b["requests_total"] for b in status["backends"]) == 20
