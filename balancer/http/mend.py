"""What aiohttp 3.14's C request parser gets wrong for a proxy, and how the front mends it.

1. Trailer fields of a chunked request carry over: llhttp reports them through the header
   callbacks, and aiohttp keeps the last pending field and flushes it into the NEXT message's
   headers (`Authorization` in a trailer became another user's header behind a reusing front
   proxy). `absorb_trailer` feeds the parser a throwaway head right after a chunked request,
   so any pending field lands there and is dropped with it (SPEC §4: trailers are dropped).
2. Bytes after a request with `Connection: close` make llhttp fail the whole read ("Data after
   `Connection: close`"), losing the request itself; RFC 9112 9.6 says answer it and ignore
   the rest. `messages_until_close` parses the read again, head by head, up to that request.
3. After a declined `Upgrade` (h2c), the parser drops the rest of the read, so a request
   pipelined behind it is never answered. `end_of_messages` finds where the read's parsed
   messages end, so the rest can be fed again.

The re-parsing walks work on a read that starts at a message boundary, one head at a time
(a strict head ends at its first CRLF CRLF) and a Content-Length body after it; anything
else (a chunked body in the same read) gives up and leaves aiohttp's answer as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestPayloadError

# A throwaway head in HTTP/1.0 keep-alive form: it needs no Host (an HTTP/1.1 head would, and
# a carried-over `Host` trailer would then make a duplicate), and llhttp stays open after it.
ABSORBER = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"

Message = tuple[RawRequestMessage, Any]  # (message, its payload)


def absorb_trailer(parser: Any) -> bool:
    """Flush a carried-over trailer field into a throwaway message. False when the parser
    did not take it cleanly (it held bytes of another message, or failed): close then."""
    try:
        messages, _, _ = parser.feed_data(ABSORBER)
    except HttpProcessingError:
        return False
    for _ in messages:
        parser.message_consumed()
    return len(messages) == 1


def _walk(
    parser: Any, data: bytes, done: Callable[[list[Message]], bool]
) -> tuple[list[Message], int] | None:
    """Feed `data` to a fresh `parser` head by head until `done(messages)`: the messages and
    the offset where the last one ends (its body may run past `data`). None if it cannot."""
    found: list[Message] = []
    offset = 0
    try:
        while not found or not done(found):
            end = data.find(b"\r\n\r\n", offset)
            if end < 0:
                return None
            messages, _, _ = parser.feed_data(data[offset : end + 4])
            offset = end + 4
            if len(messages) != 1:
                return None
            message, payload = messages[0]
            found.append((message, payload))
            if payload is not EMPTY_PAYLOAD:
                if message.chunked:
                    return None
                length = int(message.headers.get("Content-Length", "0"))
                parser.feed_data(data[offset : offset + length])
                offset += length
    except (HttpProcessingError, ValueError):
        return None
    return found, offset


def messages_until_close(parser: Any, data: bytes) -> list[Message] | None:
    """The messages of `data` up to and including the first with `Connection: close`."""
    walked = _walk(parser, data, lambda found: found[-1][0].should_close)
    return walked[0] if walked is not None else None


def end_of_messages(parser: Any, data: bytes, count: int) -> int | None:
    """Where the first `count` messages of `data` end (None if they cannot be walked)."""
    walked = _walk(parser, data, lambda found: len(found) >= count)
    if walked is None or walked[1] > len(data):
        return None
    return walked[1]


def new_parser(protocol: Any, limit: int, **limits: Any) -> Any:
    """A request parser like aiohttp's own for `protocol`, for a walk (no pipelining pause)."""
    return HttpRequestParser(
        protocol,
        protocol._loop,
        limit,
        payload_exception=RequestPayloadError,
        auto_decompress=False,
        **limits,
    )
