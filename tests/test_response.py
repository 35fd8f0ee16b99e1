"""response.py: the response head a client gets, body rules, chunks, and `Sent`."""

from __future__ import annotations

import asyncio
from email.utils import parsedate_to_datetime

import pytest
from aiohttp import web

from balancer.response import CHUNKED_END, Sent, chunk, has_body, response_head

from support import read_response

Raw = list[tuple[bytes, bytes]]
DATE = (b"Date", b"Tue, 25 Nov 2025 09:00:00 GMT")


def serve(
    raw: Raw,
    *,
    status: int = 200,
    reason: str = "OK",
    http10: bool = False,
    keep_alive: bool = True,
    framing: bytes | None = b"Content-Length: 2",
    length_for_head: bool = False,
    keep_upgrade: bool = False,
    extra: bytes | None = None,
) -> tuple[bytes, Raw]:
    """The head, split into its status line and its field lines."""
    head = response_head(
        status,
        reason,
        raw,
        http10=http10,
        keep_alive=keep_alive,
        framing=framing,
        length_for_head=length_for_head,
        keep_upgrade=keep_upgrade,
        extra=extra,
    )
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    return lines[0], [(n, v) for n, _, v in (line.partition(b": ") for line in lines[1:])]


def values(fields: Raw, name: bytes) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name.lower()]


def names(fields: Raw) -> list[bytes]:
    return [n.lower() for n, _ in fields]


@pytest.mark.parametrize(
    ("status", "reason", "http10", "line"),
    [
        (200, "OK", False, b"HTTP/1.1 200 OK"),
        (200, "OK", True, b"HTTP/1.0 200 OK"),
        (404, "Not Found", True, b"HTTP/1.0 404 Not Found"),
        (599, "", False, b"HTTP/1.1 599 "),
        (200, "Tr\xe8s bien", False, b"HTTP/1.1 200 Tr\xe8s bien"),
    ],
)
def test_status_line_follows_the_client_version(
    status: int, reason: str, http10: bool, line: bytes
) -> None:
    assert serve([DATE], status=status, reason=reason, http10=http10)[0] == line


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"X-Backend-Load",
        b"content-length",
    ],
)
def test_hop_by_hop_and_backend_framing_are_dropped(name: bytes) -> None:
    _, fields = serve([DATE, (name, b"keep-alive"), (b"X-App", b"1")], framing=None)
    assert name.lower() not in names(fields)
    assert values(fields, b"X-App") == [b"1"]


@pytest.mark.parametrize("connection_first", [True, False])
def test_fields_named_in_the_backends_connection_are_dropped(connection_first: bool) -> None:
    named: Raw = [(b"X-Internal", b"secret"), (b"x-trace", b"t")]
    connection = (b"Connection", b"close, X-Internal , X-TRACE")
    raw: Raw = [DATE, (b"X-App", b"1")]
    raw += [connection, *named] if connection_first else [*named, connection]
    _, fields = serve(raw)
    assert names(fields) == [b"date", b"x-app", b"content-length"]


def test_a_backends_field_named_close_goes_with_its_connection_close() -> None:
    # As on the request side: "close" also names a field (RFC 9110 7.6.1, 18.4).
    _, fields = serve([DATE, (b"Close", b"x"), (b"Connection", b"close"), (b"X-App", b"1")])
    assert names(fields) == [b"date", b"x-app", b"content-length"]


def test_backend_content_length_is_replaced_by_the_framing_given() -> None:
    _, fields = serve([DATE, (b"Content-Length", b"999")], framing=b"Transfer-Encoding: chunked")
    assert values(fields, b"Content-Length") == []
    assert values(fields, b"Transfer-Encoding") == [b"chunked"]
    _, fields = serve([DATE, (b"Content-Length", b"999")], framing=b"Content-Length: 12")
    assert values(fields, b"Content-Length") == [b"12"]


@pytest.mark.parametrize("status", [200, 304])
def test_content_length_is_kept_for_head_and_304_when_asked(status: int) -> None:
    raw: Raw = [DATE, (b"Content-Length", b"1234")]
    _, fields = serve(raw, status=status, framing=None, length_for_head=True)
    assert values(fields, b"Content-Length") == [b"1234"]
    _, fields = serve(raw, status=status, framing=None, length_for_head=False)
    assert values(fields, b"Content-Length") == []


@pytest.mark.parametrize(
    ("http10", "keep_alive", "connection"),
    [
        (False, True, []),
        (False, False, [b"close"]),
        (True, True, [b"keep-alive"]),
        (True, False, [b"close"]),
    ],
)
def test_connection_field_says_what_the_client_connection_does(
    http10: bool, keep_alive: bool, connection: list[bytes]
) -> None:
    # Whatever the backend said about its own connection.
    raw: Raw = [DATE, (b"Connection", b"keep-alive" if not keep_alive else b"close")]
    _, fields = serve(raw, http10=http10, keep_alive=keep_alive)
    assert values(fields, b"Connection") == connection


def test_date_is_added_only_when_the_backend_sent_none() -> None:
    _, fields = serve([(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")])
    assert values(fields, b"Date") == [b"Mon, 01 Jan 2024 00:00:00 GMT"]
    _, fields = serve([(b"X-App", b"1")])
    [added] = values(fields, b"Date")
    assert parsedate_to_datetime(added.decode()).tzname() == "UTC"


def test_set_cookie_lines_stay_separate_and_in_order() -> None:
    cookies = [b"a=1; Path=/", b"b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT", b"d=4"]
    raw: Raw = [DATE, *((b"Set-Cookie", c) for c in cookies)]
    _, fields = serve(raw, extra=b"Set-Cookie: lb=x; HttpOnly")
    assert values(fields, b"Set-Cookie") == [*cookies, b"lb=x; HttpOnly"]


def test_fields_pass_byte_for_byte() -> None:
    raw: Raw = [
        DATE,
        (b"x-MiXeD", b"caf\xe9 \xff"),
        (b"Content-Type", b"text/plain;charset=latin-1"),
        (b"WWW-Authenticate", b'Basic realm="a, b"'),
    ]
    head = response_head(200, "OK", raw, http10=False, keep_alive=True, framing=None)
    assert head == (
        b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in raw) + b"\r\n"
    )


def test_keep_upgrade_keeps_connection_and_upgrade_on_101() -> None:
    raw: Raw = [
        DATE,
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    line, fields = serve(
        raw, status=101, reason="Switching Protocols", framing=None, keep_upgrade=True
    )
    assert line == b"HTTP/1.1 101 Switching Protocols"
    assert fields == raw
    # Without keep_upgrade the same head loses them.
    _, fields = serve(raw, status=101, framing=None, keep_alive=True)
    assert names(fields) == [b"date", b"sec-websocket-accept"]


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("GET", 200, True),
        ("POST", 404, True),
        ("GET", 500, True),
        ("HEAD", 200, False),
        ("HEAD", 404, False),
        ("GET", 100, False),
        ("GET", 101, False),
        ("GET", 103, False),
        ("GET", 204, False),
        ("POST", 304, False),
        ("GET", 205, True),
    ],
)
def test_has_body(method: str, status: int, expected: bool) -> None:
    assert has_body(method, status) is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"\r\n", b"2\r\n\r\n\r\n"),
    ],
)
def test_chunk(data: bytes, expected: bytes) -> None:
    parts = chunk(data)
    assert parts[1] is data  # the payload is not copied
    assert b"".join(parts) == expected


def test_chunked_end() -> None:
    assert CHUNKED_END == b"0\r\n\r\n"


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_sent_is_what_aiohttps_handler_loop_needs(keep_alive: bool) -> None:
    """A handler that writes its response itself and returns `Sent`: aiohttp's low-level
    server awaits prepare/write_eof on it and keeps or closes the connection as it says."""

    async def handler(request: web.BaseRequest) -> Sent:
        assert request.transport is not None
        body = request.path.encode()
        request.transport.write(
            response_head(
                200,
                "OK",
                [],
                http10=False,
                keep_alive=keep_alive,
                framing=b"Content-Length: %d" % len(body),
            )
            + body
        )
        return Sent(200, keep_alive)

    server = web.Server(handler, access_log=None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n")
        first = await read_response(reader)
        assert (first.status, first.body) == (200, b"/one")
        if keep_alive:
            second = await read_response(reader)
            assert (second.status, second.body) == (200, b"/two")
        else:
            assert first.header("Connection") == ["close"]
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed after the first response
    finally:
        writer.close()
        await server.shutdown(1)
        listener.close()
        await listener.wait_closed()
