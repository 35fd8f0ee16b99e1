"""headers.py: the request head a backend gets (SPEC §4) and the client's body framing."""

from __future__ import annotations

import pytest

from balancer.errors import BadRequest
from balancer.headers import (
    connection_tokens,
    content_length,
    names_more_fields,
    request_body_framing,
    request_head,
)

Raw = list[tuple[bytes, bytes]]


def forward(
    raw: Raw,
    *,
    method: str = "GET",
    target: str = "/",
    framing: bytes | None = None,
    upgrade: bytes | None = None,
) -> tuple[bytes, Raw]:
    """The forwarded head, and its field lines parsed back into pairs."""
    head = request_head(
        method,
        target,
        raw,
        client_ip="203.0.113.7",
        proto="https",
        default_host=b"10.0.0.1:8080",
        body_framing=framing,
        upgrade=upgrade,
    )
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    fields = [(n, v) for n, _, v in (line.partition(b": ") for line in lines[1:])]
    return lines[0], fields


def values(fields: Raw, name: bytes) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name.lower()]


def names(fields: Raw) -> list[bytes]:
    return [n.lower() for n, _ in fields]


# -- request_head: hop-by-hop (RFC 9110 7.6.1) ---------------------------------------------


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
        b"connection",
        b"KEEP-ALIVE",
    ],
)
def test_hop_by_hop_field_is_not_forwarded(name: bytes) -> None:
    _, fields = forward([(b"Host", b"h"), (name, b"x"), (b"Accept", b"*/*")])
    assert name.lower() not in names(fields)
    assert values(fields, b"Accept") == [b"*/*"]


@pytest.mark.parametrize(
    ("connection_lines", "dropped"),
    [
        ([b"X-Secret"], {b"x-secret"}),
        ([b"x-secret"], {b"x-secret"}),  # case-insensitive
        ([b"keep-alive, X-Secret ,  X-Other"], {b"x-secret", b"x-other"}),  # spaces
        ([b"X-Secret", b"X-Other"], {b"x-secret", b"x-other"}),  # several Connection lines
        ([b"close,,X-Other"], {b"x-other"}),  # empty token
    ],
)
def test_fields_named_in_connection_are_not_forwarded(
    connection_lines: list[bytes], dropped: set[bytes]
) -> None:
    raw: Raw = [(b"Host", b"h"), (b"X-Secret", b"1"), (b"X-Other", b"2"), (b"X-Kept", b"3")]
    # The Connection line comes after the fields it names: still applied.
    raw += [(b"Connection", line) for line in connection_lines]
    _, fields = forward(raw)
    own = {n for n in names(fields) if n.startswith(b"x-") and not n.startswith(b"x-forwarded")}
    assert own == {b"x-secret", b"x-other", b"x-kept"} - dropped
    assert b"connection" not in names(fields)


def test_field_named_close_goes_with_connection_close() -> None:
    # "close" is a connection option and, to a proxy, also names a field (RFC 9110 7.6.1):
    # a field called Close (reserved, RFC 9110 18.4) is not forwarded.
    _, fields = forward([(b"Host", b"h"), (b"Close", b"x"), (b"Connection", b"close")])
    assert b"close" not in names(fields)
    assert b"connection" not in names(fields)


# -- request_head: X-Forwarded-* --------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        ([], b"203.0.113.7"),
        ([b"198.51.100.1"], b"198.51.100.1, 203.0.113.7"),
        ([b"198.51.100.1, 10.1.1.1"], b"198.51.100.1, 10.1.1.1, 203.0.113.7"),
        ([b"198.51.100.1", b"10.1.1.1"], b"198.51.100.1, 10.1.1.1, 203.0.113.7"),
    ],
)
def test_x_forwarded_for_is_appended_to_as_one_line(incoming: list[bytes], expected: bytes) -> None:
    raw: Raw = [(b"Host", b"h"), *((b"X-Forwarded-For", v) for v in incoming)]
    _, fields = forward(raw)
    assert values(fields, b"X-Forwarded-For") == [expected]


def test_x_forwarded_proto_and_host_replace_what_the_client_sent() -> None:
    raw: Raw = [
        (b"X-Forwarded-Proto", b"gopher"),
        (b"Host", b"Example.COM:8443"),
        (b"X-Forwarded-Host", b"evil.example"),
    ]
    _, fields = forward(raw)
    assert values(fields, b"X-Forwarded-Proto") == [b"https"]
    assert values(fields, b"X-Forwarded-Host") == [b"Example.COM:8443"]  # as received
    assert values(fields, b"Host") == [b"Example.COM:8443"]


def test_without_host_the_default_host_is_sent_and_no_x_forwarded_host() -> None:
    _, fields = forward([(b"Accept", b"*/*"), (b"X-Forwarded-Host", b"spoofed")])
    assert values(fields, b"Host") == [b"10.0.0.1:8080"]
    assert values(fields, b"X-Forwarded-Host") == []


def test_the_default_host_is_not_used_when_the_client_sent_one() -> None:
    _, fields = forward([(b"host", b"app.example")])
    assert values(fields, b"Host") == [b"app.example"]
    assert b"10.0.0.1:8080" not in b"".join(v for _, v in fields)


def test_an_empty_host_gives_the_backend_exactly_one_host() -> None:
    _, fields = forward([(b"Host", b"")])
    assert len(values(fields, b"Host")) == 1


# -- request_head: Expect, framing, upgrade, request line -----------------------------------


def test_expect_is_answered_by_the_balancer_not_forwarded() -> None:
    _, fields = forward(
        [(b"Host", b"h"), (b"Expect", b"100-continue")], framing=b"Content-Length: 3"
    )
    assert values(fields, b"Expect") == []


@pytest.mark.parametrize(
    ("incoming", "framing", "expected"),
    [
        ([(b"Content-Length", b"10")], b"Content-Length: 10", [(b"Content-Length", b"10")]),
        (
            [(b"Transfer-Encoding", b"chunked")],
            b"Transfer-Encoding: chunked",
            [(b"Transfer-Encoding", b"chunked")],
        ),
        ([(b"content-length", b" 7")], b"Content-Length: 7", [(b"Content-Length", b"7")]),
        ([(b"Content-Length", b"0")], None, []),
    ],
)
def test_the_body_framing_is_the_line_given(
    incoming: Raw, framing: bytes | None, expected: Raw
) -> None:
    _, fields = forward([(b"Host", b"h"), *incoming], method="POST", framing=framing)
    framing_fields = [
        (n, v) for n, v in fields if n.lower() in (b"content-length", b"transfer-encoding")
    ]
    assert framing_fields == expected


def test_a_websocket_upgrade_keeps_connection_upgrade_and_upgrade() -> None:
    raw: Raw = [
        (b"Host", b"h"),
        (b"Connection", b"keep-alive, Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    _, fields = forward(raw, upgrade=b"websocket")
    assert values(fields, b"Connection") == [b"Upgrade"]
    assert values(fields, b"Upgrade") == [b"websocket"]
    assert values(fields, b"Sec-WebSocket-Key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]


def test_without_upgrade_an_upgrade_request_loses_its_upgrade() -> None:
    raw: Raw = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")]
    _, fields = forward(raw)
    assert values(fields, b"Connection") == values(fields, b"Upgrade") == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/"),
        ("PATCH", "/a%20b/../c?x=1&y=%2F&z"),
        ("OPTIONS", "*"),
        ("GET", "http://example.com/absolute?q"),
    ],
)
def test_the_request_line_keeps_method_and_raw_target(method: str, target: str) -> None:
    line, _ = forward([(b"Host", b"h")], method=method, target=target)
    assert line == f"{method} {target} HTTP/1.1".encode()


def test_other_fields_pass_byte_for_byte_in_order() -> None:
    raw: Raw = [
        (b"Host", b"h"),
        (b"x-Mixed-CASE", b"caf\xe9"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"Accept", b"text/html,  */*;q=0.1"),
    ]
    _, fields = forward(raw)
    assert fields[: len(raw)] == raw


# -- request_body_framing (RFC 9112 6.1) -----------------------------------------------------


@pytest.mark.parametrize(
    ("version", "raw", "max_body", "expected"),
    [
        ((1, 1), [], 0, None),
        ((1, 1), [(b"Host", b"h")], 100, None),
        ((1, 1), [(b"Content-Length", b"5")], 0, b"Content-Length: 5"),
        ((1, 0), [(b"content-length", b" 5 ")], 0, b"Content-Length: 5"),
        ((1, 1), [(b"Content-Length", b"100")], 100, b"Content-Length: 100"),  # at the cap
        ((1, 1), [(b"Content-Length", b"10000000000")], 0, b"Content-Length: 10000000000"),
        ((1, 1), [(b"Transfer-Encoding", b"chunked")], 0, b"Transfer-Encoding: chunked"),
        ((1, 1), [(b"transfer-encoding", b"Chunked")], 0, b"Transfer-Encoding: chunked"),
        ((1, 1), [(b"Transfer-Encoding", b"chunked")], 1, b"Transfer-Encoding: chunked"),
    ],
)
def test_body_framing_accepted(
    version: tuple[int, int], raw: Raw, max_body: int, expected: bytes | None
) -> None:
    assert request_body_framing(version, raw, max_body) == expected


@pytest.mark.parametrize(
    ("version", "raw", "max_body", "status"),
    [
        ((1, 1), [(b"Transfer-Encoding", b"gzip, chunked")], 0, 501),
        ((1, 1), [(b"Transfer-Encoding", b"gzip")], 0, 501),
        ((1, 1), [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], 0, 501),
        ((1, 0), [(b"Transfer-Encoding", b"chunked")], 0, 400),
        ((1, 1), [(b"Content-Length", b"101")], 100, 413),
    ],
)
def test_body_framing_refused(
    version: tuple[int, int], raw: Raw, max_body: int, status: int
) -> None:
    with pytest.raises(BadRequest) as refused:
        request_body_framing(version, raw, max_body)
    assert refused.value.status == status
    assert refused.value.sent is False
    assert refused.value.backend_failure is False


# -- connection_tokens, content_length -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], frozenset()),
        ([(b"Host", b"h")], frozenset()),
        ([(b"Connection", b"close")], {b"close"}),
        ([(b"connection", b"Keep-Alive, X-Foo")], {b"keep-alive", b"x-foo"}),
        ([(b"Connection", b" X-A ,, x-b , "), (b"CONNECTION", b"X-C")], {b"x-a", b"x-b", b"x-c"}),
        ([(b"X-Connection", b"x-a")], frozenset()),
    ],
)
def test_connection_tokens(raw: Raw, expected: frozenset[bytes]) -> None:
    assert connection_tokens(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], None),
        ([(b"Content-Type", b"text/plain")], None),
        ([(b"Content-Length", b"0")], 0),
        ([(b"content-length", b"123456789012")], 123456789012),
        ([(b"X-Content-Length", b"9"), (b"CONTENT-LENGTH", b"42")], 42),
    ],
)
def test_content_length(raw: Raw, expected: int | None) -> None:
    assert content_length(raw) == expected


@pytest.mark.parametrize(
    ("value", "more"),
    [
        (b"keep-alive", False),
        (b"Keep-Alive", False),
        (b" keep-alive ", False),
        (b"upgrade", False),
        (b"keep-alive, Upgrade", False),
        (b"close", True),
        (b"keep-alive, X-Private", True),
        (b"x-private", True),
        (b"", False),
        (b" , ", False),
    ],
)
def test_names_more_fields(value: bytes, more: bool) -> None:
    assert names_more_fields(value) is more
