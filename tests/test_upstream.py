"""upstream.py against real backends on port 0: keep-alive reuse, what is never pooled,
timeouts, misbehaving backends, interim responses and flow control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import pytest

from balancer.errors import (
    BackendDropped,
    BackendTimeout,
    BadBackendResponse,
    ConnectFailed,
    StaleConnection,
)
from balancer.upstream import HIGH_WATER, ResponseHead, UpstreamConnection
from balancer.upstream_pool import UpstreamPool

from support import eventually, free_port, start_backend, start_raw_backend

MakePool = Callable[..., UpstreamPool]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    loop = asyncio.get_running_loop()
    made: list[UpstreamPool] = []

    def make(url: str, *, read_timeout: float = 10.0) -> UpstreamPool:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        pool = UpstreamPool(
            parts.hostname,
            parts.port,
            use_tls=False,
            connect_timeout=2.0,
            read_timeout=read_timeout,
            loop=loop,
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def request(path: str = "/", method: str = "GET", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: backend\r\n".encode() + extra + b"\r\n"


async def send(conn: UpstreamConnection, head: bytes, method: str = "GET") -> ResponseHead:
    conn.send_head(head, method)
    async with asyncio.timeout(10):
        return await conn.read_head()


async def read_body(conn: UpstreamConnection) -> bytes:
    body = bytearray()
    async with asyncio.timeout(30):
        while data := await conn.read_chunk():
            body += data
    return bytes(body)


async def exchange(
    pool: UpstreamPool, head: bytes, method: str = "GET"
) -> tuple[UpstreamConnection, ResponseHead, bytes]:
    conn = await pool.acquire()
    response = await send(conn, head, method)
    return conn, response, await read_body(conn)


# -- keep-alive --------------------------------------------------------------------------------


def test_a_connection_has_no_instance_dict() -> None:
    # Its attributes are read on every request: past 29 of them CPython 3.11 gives an
    # instance a real dict and each access a slower lookup; slots keep them fast.
    assert UpstreamConnection.__dictoffset__ == 0


async def test_a_clean_keep_alive_response_pools_the_connection_for_reuse(
    make_pool: MakePool,
) -> None:
    backend = await start_backend("b0")
    try:
        pool = make_pool(backend.url)
        conn, head, body = await exchange(pool, request("/first"))
        assert (head.status, head.keep_alive, conn.complete) == (200, True, True)
        assert b'"path": "/first"' in body
        assert repr(conn) == f"<UpstreamConnection 127.0.0.1:{backend.port} busy reusable=True>"
        conn.finish()
        assert (
            repr(pool) == f"<UpstreamPool 127.0.0.1:{backend.port} [Connections: 0 active, 1 idle]>"
        )
        assert repr(conn) == f"<UpstreamConnection 127.0.0.1:{backend.port} idle reusable=True>"

        again = pool.take_idle()
        assert again is conn
        assert (
            repr(pool) == f"<UpstreamPool 127.0.0.1:{backend.port} [Connections: 1 active, 0 idle]>"
        )
        assert pool.take_idle() is None
        head = await send(again, request("/second"))
        assert b'"path": "/second"' in await read_body(again)
        again.finish()
        assert [s.path for s in backend.seen] == ["/first", "/second"]
        assert backend.seen[0].peer_port == backend.seen[1].peer_port  # one TCP connection
    finally:
        await backend.stop()


async def test_the_most_recently_used_idle_connection_is_taken_first(make_pool: MakePool) -> None:
    backend = await start_backend("b0")
    try:
        pool = make_pool(backend.url)
        first = await pool.connect()
        second = await pool.connect()
        for conn in (first, second):
            await send(conn, request())
            await read_body(conn)
            conn.finish()
        assert pool.idle_count == 2
        assert pool.take_idle() is second
        assert pool.take_idle() is first
    finally:
        await backend.stop()


# -- never pooled ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "extra", "keep_alive"),
    [
        ("HEAD", b"", True),  # llhttp cannot be told a response answers HEAD
        ("GET", b"Connection: close\r\n", False),  # the backend closes after it
    ],
)
async def test_not_pooled_after_head_or_connection_close(
    make_pool: MakePool, method: str, extra: bytes, keep_alive: bool
) -> None:
    backend = await start_backend("b0")
    try:
        pool = make_pool(backend.url)
        conn, head, body = await exchange(pool, request("/", method, extra), method)
        assert (head.status, head.keep_alive, conn.reusable) == (200, keep_alive, False)
        if method == "HEAD":
            assert body == b""
            assert int(dict(head.raw_headers)[b"Content-Length"]) > 0
        conn.finish()
        assert conn.transport is None
        assert pool.idle_count == 0
        assert pool.take_idle() is None
    finally:
        await backend.stop()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, until the close",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, until the close",
    ],
)
async def test_a_close_delimited_body_is_read_to_the_end_and_never_pooled(
    make_pool: MakePool, answer: bytes
) -> None:
    raw = await start_raw_backend(answer, close=True)
    try:
        pool = make_pool(raw.url)
        conn, head, body = await exchange(pool, request())
        assert head.status == 200
        assert body == b"hello, until the close"  # RFC 9112 6.3 item 8
        assert (conn.complete, conn.reusable) == (True, False)
        conn.finish()
        assert pool.idle_count == 0
    finally:
        await raw.stop()


async def test_a_body_not_read_to_its_end_closes_the_connection(make_pool: MakePool) -> None:
    backend = await start_backend("b0")
    try:
        pool = make_pool(backend.url)
        conn = await pool.connect()
        head = await send(conn, request(f"/stream?size={4 * HIGH_WATER}&length=1"))
        assert head.status == 200
        assert await conn.read_chunk()
        assert not conn.complete
        conn.finish()  # e.g. the client went away mid-body
        assert conn.transport is None
        assert pool.idle_count == 0
        # The pool forgets it once the transport reports the close.
        await eventually(lambda: "[Connections: 0 active, 0 idle]" in repr(pool))
    finally:
        await backend.stop()


async def test_an_early_answer_with_an_error_is_never_pooled(make_pool: MakePool) -> None:
    # A full response, then garbage: the error arrives after the response is complete.
    raw = await start_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\x00junk", close=False
    )
    try:
        pool = make_pool(raw.url)
        conn, head, body = await exchange(pool, request())
        assert (head.status, body) == (200, b"ok")
        assert conn.reusable is False
        conn.finish()
        assert pool.idle_count == 0
        assert conn.transport is None
    finally:
        await raw.stop()


# -- connecting and waiting ------------------------------------------------------------------------


async def test_connect_to_a_closed_port_is_connect_failed_with_nothing_sent(
    make_pool: MakePool,
) -> None:
    pool = make_pool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed) as failed:
        await pool.acquire()
    assert failed.value.sent is False  # any method may be retried elsewhere (SPEC §4)
    assert failed.value.backend_failure is True
    assert failed.value.status == 502
    assert "[Connections: 0 active, 0 idle]" in repr(pool)


async def test_a_backend_that_never_answers_is_a_read_timeout_and_closed(
    make_pool: MakePool,
) -> None:
    raw = await start_raw_backend(b"", close=False)  # reads the head, never answers
    try:
        pool = make_pool(raw.url, read_timeout=0.2)
        conn = await pool.connect()
        started = time.monotonic()
        with pytest.raises(BackendTimeout) as timed_out:
            await send(conn, request())
        assert 0.2 <= time.monotonic() - started < 3.0
        assert timed_out.value.status == 504
        assert conn.transport is None
        assert conn.reusable is False
        assert len(raw.requests) == 1
    finally:
        await raw.stop()


async def test_a_backend_closing_before_any_byte_is_dropped(make_pool: MakePool) -> None:
    raw = await start_raw_backend(b"", close=True)
    try:
        pool = make_pool(raw.url)
        conn = await pool.connect()
        with pytest.raises(BackendDropped) as dropped:
            await send(conn, request())
        assert dropped.value.sent is True  # the request went out: only idempotent ones retry
        assert conn.transport is None
        assert pool.idle_count == 0
    finally:
        await raw.stop()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\rb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n Folded: x\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
    ids=[
        "cl-conflict",
        "cl-twice",
        "cl-and-te",
        "ctl",
        "bare-cr",
        "cl-negative",
        "obs-fold",
        "status",
        "not-http",
    ],
)
async def test_a_malformed_response_is_bad_backend_response(
    make_pool: MakePool, answer: bytes
) -> None:
    raw = await start_raw_backend(answer, close=False)
    try:
        pool = make_pool(raw.url)
        conn = await pool.connect()
        with pytest.raises(BadBackendResponse) as bad:
            await send(conn, request())
        assert bad.value.status == 502
        assert conn.transport is None
        conn.finish()
        assert pool.idle_count == 0
    finally:
        await raw.stop()


async def test_interim_responses_are_skipped(make_pool: MakePool) -> None:
    raw = await start_raw_backend(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        close=False,
    )
    try:
        pool = make_pool(raw.url)
        conn, head, body = await exchange(pool, request())
        assert head == ResponseHead(201, "Created", [(b"Content-Length", b"4")], True)
        assert body == b"done"
        conn.finish()
        assert pool.take_idle() is conn  # the interim responses left the framing intact
        head = await send(conn, request())
        assert (head.status, await read_body(conn)) == (201, b"done")
    finally:
        await raw.stop()


async def test_bytes_arriving_on_an_idle_pooled_connection_close_it(make_pool: MakePool) -> None:
    unsolicited = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await unsolicited.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        pool = make_pool(f"http://127.0.0.1:{port}")
        conn, head, body = await exchange(pool, request())
        assert (head.status, body) == (200, b"ok")
        conn.finish()
        assert pool.idle_count == 1
        unsolicited.set()
        await eventually(lambda: conn.transport is None)
        assert pool.idle_count == 0
        assert pool.take_idle() is None  # the stale response is never read as an answer
    finally:
        server.close()
        await server.wait_closed()


async def test_a_second_response_in_the_same_read_is_not_taken_and_not_pooled(
    make_pool: MakePool,
) -> None:
    raw = await start_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nstale",
        close=False,
    )
    try:
        pool = make_pool(raw.url)
        conn = await pool.connect()
        try:
            head = await send(conn, request())
            body = await read_body(conn)
        except BadBackendResponse:
            pass  # refusing the whole exchange is fine too
        else:
            assert (head.status, body) == (200, b"ok")
        conn.finish()
        assert pool.idle_count == 0
    finally:
        await raw.stop()


# -- flow control ----------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["&length=1", ""], ids=["content-length", "chunked"])
async def test_a_large_body_pauses_reading_and_streams_completely(
    make_pool: MakePool, framing: str
) -> None:
    size = 16 * HIGH_WATER + 12345
    backend = await start_backend("b0")
    try:
        pool = make_pool(backend.url, read_timeout=0.3)
        conn = await pool.connect()
        head = await send(conn, request(f"/stream?size={size}{framing}"))
        assert head.status == 200
        # Nobody reads: the connection stops reading the backend at HIGH_WATER ...
        await eventually(lambda: conn._reading_paused)
        buffered = conn._buffered
        assert HIGH_WATER < buffered < 2 * HIGH_WATER
        # ... and a slow reader is not a slow backend: past read_timeout, no timeout.
        # (This test is about a duration, so it waits for it.)
        await asyncio.sleep(3 * pool.read_timeout)
        assert conn._buffered == buffered
        assert conn.transport is not None
        body = await read_body(conn)
        assert len(body) == size
        assert body == b"x" * size
        assert conn._reading_paused is False
        conn.finish()
        assert pool.take_idle() is conn
    finally:
        await backend.stop()


# -- issue 13: trailers, stale reuse, the read timeout from the end of the request -------------


async def test_response_trailers_are_dropped_even_in_one_read(make_pool: MakePool) -> None:
    raw = await start_raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nSet-Cookie: injected=1\r\nX-Backend-Load: cpu=0.9\r\n\r\n",
        close=False,
    )
    try:
        pool = make_pool(raw.url)
        conn, response, body = await exchange(pool, request())
        assert body == b"ok"
        assert [name for name, _ in response.raw_headers] == [b"Transfer-Encoding"]
        assert conn.reported_load is None  # a trailer is not read as the head's field either
    finally:
        await raw.stop()


async def test_a_reused_connection_closed_before_any_byte_is_stale_not_dropped(
    make_pool: MakePool,
) -> None:
    raw = await start_raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True)
    try:
        pool = make_pool(raw.url)
        conn, _, _ = await exchange(pool, request())
        conn.finish()
        reused = pool.take_idle()
        assert reused is conn and reused.reused
        # The raw backend closes after one answer: the reuse meets a closed connection.
        with pytest.raises(StaleConnection) as stale:
            await send(reused, request())
        assert stale.value.backend_failure is False
        fresh = await pool.connect()
        assert not fresh.reused
    finally:
        await raw.stop()


async def test_the_read_timeout_waits_for_the_end_of_the_request(make_pool: MakePool) -> None:
    """While the body is still coming (from a slow client), the backend's silence is not a
    read timeout: it counts from request_sent (SPEC §4)."""

    async def answer_after_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_after_body, "127.0.0.1", 0)
    try:
        pool = make_pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", read_timeout=0.2)
        conn = await pool.connect()
        conn.send_head(request("/", "POST", b"Content-Length: 2\r\n"), "POST", body=True)
        head = asyncio.ensure_future(conn.read_head())
        await asyncio.sleep(0.5)  # a client slower than the read timeout (the scenario)
        assert not head.done()
        await conn.write(b"ab")
        conn.request_sent()
        async with asyncio.timeout(5):
            assert (await head).status == 200
    finally:
        server.close()
        await server.wait_closed()
