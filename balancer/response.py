"""Writing a backend's response to the client ourselves.

The head is re-serialised from the fields llhttp parsed (never spliced from raw bytes), without
the hop-by-hop fields, and re-framed for this client: Content-Length when the size is known,
chunked for an HTTP/1.1 client otherwise, close-delimited for an HTTP/1.0 client. Writing it
straight to the transport, instead of through aiohttp's StreamResponse, halves the cost of the
front (measured here: 16k -> 30k req/s for aiohttp's server alone) and sends the backend's
fields byte for byte (aiohttp would add Content-Type and Server, and re-encode values).
"""

from __future__ import annotations

from typing import Any

from balancer.headers import HOP_BY_HOP, RawHeaders, connection_tokens, names_more_fields
from balancer.http.date import http_date

# The backend's framing is re-done; its load report is for the balancer, not the client.
_DROP_FROM_RESPONSE = HOP_BY_HOP | {b"content-length", b"x-backend-load"}
_STATUS_WITHOUT_BODY = frozenset({204, 304})
CHUNKED_END = b"0\r\n\r\n"
_STATUS_LINES: dict[tuple[int, str, bool], bytes] = {}


class Sent:
    """Returned to aiohttp's request handler after we wrote the response ourselves.

    aiohttp's handler loop calls `prepare` and `write_eof` on whatever the handler returns
    and reads `keep_alive` to decide whether to read another request on the connection.
    """

    __slots__ = ("body_bytes", "keep_alive", "status")

    def __init__(self, status: int, keep_alive: bool, body_bytes: int = 0) -> None:
        self.status = status
        self.keep_alive = keep_alive
        self.body_bytes = body_bytes  # the body bytes the client was sent (the access log)

    async def prepare(self, request: Any) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def has_body(method: str, status: int) -> bool:
    """RFC 9110 6.4.1: HEAD, 1xx, 204 and 304 responses never carry content."""
    return method != "HEAD" and status not in _STATUS_WITHOUT_BODY and status >= 200


def response_head(
    status: int,
    reason: str,
    raw_headers: RawHeaders,
    *,
    http10: bool,
    keep_alive: bool,
    framing: bytes | None,
    length_for_head: bool = False,
    keep_upgrade: bool = False,
    extra: bytes | None = None,
) -> bytes:
    """The response head the client gets.

    `framing` is the framing field line to add (`Content-Length: n`, `Transfer-Encoding:
    chunked`) or None; `length_for_head` keeps the backend's Content-Length on a HEAD or 304
    answer (the size GET would give); `extra` one more field line of the balancer's own (its
    sticky cookie).
    """
    dropped = _DROP_FROM_RESPONSE
    if keep_upgrade:
        dropped = dropped - {b"connection", b"upgrade"}
    parts = _serialise(raw_headers, dropped, length_for_head)
    if parts is None:  # Connection names more fields to drop: a second, rarer pass
        dropped = dropped | connection_tokens(raw_headers)
        parts = _serialise(raw_headers, dropped, length_for_head, names_fields=False)
        assert parts is not None
    key = (status, reason, http10)
    line = _STATUS_LINES.get(key)
    if line is None:
        version = b"HTTP/1.0 " if http10 else b"HTTP/1.1 "
        line = b"%s%d %s\r\n" % (version, status, reason.encode("latin-1"))
        if len(_STATUS_LINES) < 256:  # backends' reason phrases cannot grow it without bound
            _STATUS_LINES[key] = line
    parts[0] = line
    if extra is not None:
        parts += (extra, b"\r\n")
    if framing is not None:
        parts += (framing, b"\r\n")
    if not keep_upgrade:
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif http10:
            parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _serialise(
    raw_headers: RawHeaders,
    dropped: frozenset[bytes],
    length_for_head: bool,
    names_fields: bool = True,
) -> list[bytes] | None:
    parts = [b""]
    has_date = False
    for name, value in raw_headers:
        lname = name.lower()
        if lname in dropped:
            if lname == b"connection" and names_fields and names_more_fields(value):
                return None
            elif lname == b"content-length" and length_for_head:
                parts += (b"Content-Length: ", value, b"\r\n")
            continue
        if lname == b"date":
            has_date = True
        parts += (name, b": ", value, b"\r\n")
    if not has_date:
        # RFC 9110 6.6.1: a recipient with a clock appends a missing Date when forwarding.
        parts += (b"Date: ", http_date().encode("latin-1"), b"\r\n")
    return parts


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]
