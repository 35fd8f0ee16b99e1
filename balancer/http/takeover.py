"""Taking a client connection over after a 101: from then on its bytes come to the tunnel
(balancer/tunnel.py), not to aiohttp's request parser.

`RequestHandler.set_parser` (typed for aiohttp's own WebSocketReader) puts a payload parser in
the parser's place; aiohttp 3.14 feeds it `feed_data(data)`, which returns `(eof, tail)`, and
calls `feed_eof()` when the connection is lost. That shape is aiohttp's, so it stays here.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class _PayloadParser:
    """In aiohttp's payload parser's place: each read to `on_data`, the end to `on_eof`."""

    __slots__ = ("_on_data", "_on_eof")

    def __init__(self, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self._on_data = on_data
        self._on_eof = on_eof

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._on_data(data)
        return False, b""  # never an end of its own: the tunnel ends when a side closes

    def feed_eof(self) -> None:
        self._on_eof()


def take_over(
    request: web.BaseRequest, on_data: Callable[[bytes], None], on_eof: Callable[[], None]
) -> None:
    """From now on, the client's bytes go to `on_data` and its close to `on_eof`."""
    request.protocol.set_parser(_PayloadParser(on_data, on_eof))  # type: ignore[arg-type]
