"""The client-facing HTTP/1.1 server: aiohttp's low-level server with the limits it lacks.

aiohttp's C parser (llhttp, strict) already refuses ambiguous framing; what it leaves to us
(../shared/LAB.md): a deadline for the whole request head (`timeouts.client_header`, counted
from accept or, on a kept-alive connection, from the head's first byte; trickling bytes does
not extend it), a cap on the whole head (`limits.max_head`), and the right status for heads
over the limits (414 for the request line, 431 for header fields, where aiohttp says 400).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from balancer.config import LimitsConfig, TimeoutsConfig
from balancer.front_loop import LeanRequestHandler

log = logging.getLogger("balancer.front")

REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 20\r\n\r\n408 Request Timeout\n"
)
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 36\r\n\r\n431 Request Header Fields Too Large\n"
)


def head_size(message: RawRequestMessage) -> int:
    """The size of a parsed request head: request line, field lines, blank line."""
    size = len(message.method) + len(message.path) + 13  # "M P HTTP/1.1\r\n"
    for name, value in message.raw_headers:
        size += len(name) + len(value) + 4
    return size + 2


def client_address(request: web.BaseRequest) -> str:
    """The client's IP address ("" when unknown), read once per connection: aiohttp works
    `request.remote` out again for every request."""
    protocol = request.protocol
    if isinstance(protocol, FrontHandler):
        return protocol.client_ip
    return request.remote or ""


class HeadTooLarge(BadHttpMessage):
    """The whole request head is over limits.max_head."""


class FrontHandler(LeanRequestHandler):
    """One client connection."""

    __slots__ = (
        "_head_bytes",
        "_head_start",
        "_head_timer",
        "_last_payload",
        "_limits",
        "_line_ended",
        "_timeouts",
        "client_ip",
    )

    def __init__(
        self, manager: web.Server, *, limits: LimitsConfig, timeouts: TimeoutsConfig, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._timeouts = timeouts
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_start = b""
        # The body of the newest parsed request; None when it has none (or none was parsed).
        self._last_payload: Any = None
        self._line_ended = True  # whether the refused head's request line was complete
        self.client_ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = self.peername  # aiohttp's, cached for the connection
        if isinstance(peer, tuple | list) and peer:
            self.client_ip = str(peer[0])  # as aiohttp's request.remote reads it
        elif isinstance(peer, str):
            self.client_ip = peer
        self._start_head_timer()  # from accept (SPEC §4)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        payload = self._last_payload
        if (
            self._upgraded
            or self._payload_parser is not None
            or (payload is not None and not payload.is_eof())
        ):
            super().data_received(data)  # a body or a tunnel, not a head
            return
        if not self._head_bytes:
            self._head_start = data
        parsed_before = self._request_count
        super().data_received(data)
        if self._request_count != parsed_before:
            self._head_complete(data, self._request_count - parsed_before)
            return
        self._head_bytes += len(data)
        if self._head_bytes > self._limits.max_head:
            self._refuse(HEAD_TOO_LARGE, "request head over limits.max_head")
        elif self._head_timer is None:
            self._start_head_timer()  # the first byte of a head on a kept-alive connection

    def _head_complete(self, data: bytes, parsed: int) -> None:
        """Heads were parsed (or refused by the parser): check what the parser does not."""
        self._stop_head_timer()
        messages = self._messages
        limit = self._limits.max_head
        if messages:
            message, payload = messages[-1]
            if isinstance(message, _ErrInfo):
                line_limit = self._limits.max_request_line + 2
                self._line_ended = b"\n" in self._head_start[:line_limit]
            elif self._head_bytes + len(data) > limit:
                # Only then can a head be over max_head: measure each one parsed from this
                # read from its fields, and refuse the ones over (never forwarded).
                for index in range(max(0, len(messages) - parsed), len(messages)):
                    message, _ = messages[index]
                    if not isinstance(message, _ErrInfo) and head_size(message) > limit:
                        refusal = HeadTooLarge(f"request head over limits.max_head ({limit})")
                        messages[index] = (_ErrInfo(431, refusal, str(refusal)), EMPTY_PAYLOAD)
                payload = messages[-1][1]
            self._last_payload = payload if payload is not EMPTY_PAYLOAD else None
        self._head_bytes = 0
        self._head_start = b""

    def _awaiting_head(self) -> bool:
        """Whether the next bytes from the client belong to a request head (not a body)."""
        if self._upgraded or self._payload_parser is not None:
            return False
        payload = self._last_payload
        return payload is None or bool(payload.is_eof())

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse, with the status SPEC §4 names."""
        if isinstance(exc, LineTooLong):
            status = 431 if self._line_ended else 414
        elif isinstance(exc, HeadTooLarge) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)
        ):
            status = 431
        elif exc is not None and not isinstance(exc, HttpProcessingError):
            # Not a parse error: a bug of ours reached aiohttp. Say so loudly.
            log.error("unexpected error on a request from %s", request.remote, exc_info=exc)
            response = web.Response(status=500, text="500 Internal Server Error\n")
            response.force_close()
            return response
        log.info("refused a request from %s: %s %s", request.remote, status, exc)
        text = f"{status} {_PHRASES.get(status, 'Bad Request')}\n"
        response = web.Response(status=status, text=text)
        response.force_close()
        return response

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._timeouts.client_header, self._head_timeout)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._awaiting_head():
            return
        if self._head_bytes == 0 and self._request_count > 0:
            return  # idle between requests: that is client_idle's job
        self._refuse(REQUEST_TIMEOUT, "request head not complete within timeouts.client_header")

    def _refuse(self, answer: bytes, why: str) -> None:
        log.info("closing a connection from %s: %s", self.peername, why)
        self._stop_head_timer()
        if self._request_in_progress or self._messages:
            # A response is still going out on this connection: never write into it; the
            # connection closes once it is done.
            self.close()
            return
        if self.transport is not None:
            self.transport.write(answer)
        self.force_close()


_PHRASES = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}


class FrontServer(web.Server):
    """aiohttp's low-level server, making `FrontHandler`s."""

    def __init__(
        self, handler: Any, *, limits: LimitsConfig, timeouts: TimeoutsConfig, **kwargs: Any
    ) -> None:
        super().__init__(
            handler,
            handler_cancellation=True,  # a client gone cancels its request (frees the backend)
            max_line_size=limits.max_request_line,
            max_field_size=limits.max_header_line,
            max_headers=limits.max_headers,
            keepalive_timeout=timeouts.client_idle,
            access_log=None,
            # Bodies pass as they came: decoding a gzip body here would forward decoded bytes
            # under the client's Content-Length and Content-Encoding (request smuggling).
            auto_decompress=False,
            **kwargs,
        )
        self._limits = limits
        self._timeouts = timeouts

    def __call__(self) -> RequestHandler:
        return FrontHandler(
            self, loop=self._loop, limits=self._limits, timeouts=self._timeouts, **self._kwargs
        )
