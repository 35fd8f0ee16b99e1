"""The client-facing HTTP/1.1 server: aiohttp's low-level server with the limits it lacks.

aiohttp's C parser (llhttp, strict) already refuses ambiguous framing; what it leaves to us:
a deadline for the whole request head (`timeouts.client_header`, counted
from accept or, on a kept-alive connection, from the head's first byte; trickling bytes does
not extend it), a cap on the whole head (`limits.max_head`), and the right status for heads
over the limits (414 for the request line, 431 for header fields, where aiohttp says 400).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from balancer.config import LimitsConfig, TimeoutsConfig
from balancer.http import mend
from balancer.http.loop import LeanRequestHandler
from balancer.listener import ConnectionGate

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


def connection_of(request: web.BaseRequest) -> FrontHandler | None:
    """The client connection a proxied request came on: its `client_ip`, and its `route`
    (LeanRequestHandler), where the proxy keeps what it decided for the request."""
    protocol = request.protocol
    return protocol if isinstance(protocol, FrontHandler) else None


def client_address(request: web.BaseRequest) -> str:
    """The client's IP address ("" when unknown), read once per connection: aiohttp works
    `request.remote` out again for every request."""
    protocol = request.protocol
    if isinstance(protocol, FrontHandler):
        return protocol.client_ip
    return request.remote or ""


class OwnResponse(web.Response):
    """An answer of the balancer's own, without aiohttp's `Server: Python/... aiohttp/...`
    (a version disclosure; SPEC §4: no Server header naming a library or version)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self._headers.popall(hdrs.SERVER, None)


class HeadTooLarge(BadHttpMessage):
    """The whole request head is over limits.max_head."""


class FrontHandler(LeanRequestHandler):
    """One client connection."""

    __slots__ = (
        "_chunked_open",
        "_chunked_tail",
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
        # The body of a chunked request still arriving (its end needs mend.py's care).
        self._chunked_open: Any = None
        self._chunked_tail = b""  # its last bytes so far (the end may come split)
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
        if self._upgraded or self._payload_parser is not None:
            super().data_received(data)  # a tunnel, not a head
            return
        if payload is not None and not payload.is_eof():
            self._body_received(data)
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

    def _body_received(self, data: bytes) -> None:
        """Body bytes (and maybe heads pipelined behind the body's end)."""
        parsed_before = self._request_count
        super().data_received(data)
        chunked = self._chunked_open
        if chunked is not None:
            if chunked.is_eof():
                self._chunked_open = None
                ended = (self._chunked_tail + data)[-4:]
                self._chunked_ended(chunked, ended, self._request_count == parsed_before)
            else:
                self._chunked_tail = (self._chunked_tail + data[-4:])[-4:]
        if self._request_count != parsed_before:
            self._head_start = b""
            self._head_complete(data, self._request_count - parsed_before)

    def _head_complete(self, data: bytes, parsed: int) -> None:
        """Heads were parsed (or refused by the parser): check what the parser does not."""
        self._stop_head_timer()
        messages = self._messages
        head_start = self._head_start  # `is data`: this read began at a message boundary
        over = self._head_bytes + len(data) > self._limits.max_head
        self._head_bytes = 0
        self._head_start = b""
        if not messages:
            self._last_payload = None
            return
        message, payload = messages[-1]
        if isinstance(message, _ErrInfo):
            self._last_payload = None
            line_limit = self._limits.max_request_line + 2
            self._line_ended = b"\n" in head_start[:line_limit]
            if head_start is data and message.message.startswith("Data after `Connection: close`"):
                self._answer_before_close(data)
            return
        if over:
            self._last_payload = None
            self._refuse_large_heads(parsed)
            payload = messages[-1][1]
        if parsed > 1 or message.chunked or message.upgrade:
            self._last_payload = None
            self._inspect(data, parsed, head_start is data)
            return
        # The one head of a plain request, the common case: only its body to remember.
        self._last_payload = payload if payload is not EMPTY_PAYLOAD else None

    def _refuse_large_heads(self, parsed: int) -> None:
        """Only when a read's bytes are over max_head can a head be: measure each one parsed
        from this read from its fields, and refuse the ones over (never forwarded)."""
        messages = self._messages
        limit = self._limits.max_head
        for index in range(max(0, len(messages) - parsed), len(messages)):
            message, _ = messages[index]
            if not isinstance(message, _ErrInfo) and head_size(message) > limit:
                refusal = HeadTooLarge(f"request head over limits.max_head ({limit})")
                messages[index] = (_ErrInfo(431, refusal, str(refusal)), EMPTY_PAYLOAD)

    def _inspect(self, data: bytes, parsed: int, fresh: bool) -> None:
        """Several heads, a chunked body or an Upgrade in one read: the rarer cases."""
        messages = self._messages
        last = len(messages) - 1
        for index in range(max(0, len(messages) - parsed), len(messages)):
            message, payload = messages[index]
            if isinstance(message, _ErrInfo):
                continue
            if message.chunked:
                if not payload.is_eof():
                    self._chunked_open = payload  # its end comes in a later read
                    self._chunked_tail = data[-4:]
                else:
                    self._chunked_ended(payload, data, index == last)
                    if index != last:
                        return  # what followed it was dropped
            if index == last:
                self._last_payload = payload if payload is not EMPTY_PAYLOAD else None
                if message.upgrade and not self._upgraded and fresh:
                    self._after_declined_upgrade(data, parsed)

    def _chunked_ended(self, payload: Any, data: bytes, nothing_after: bool) -> None:
        """A chunked request's body ended in the read that `data` ends. Its trailer fields,
        if any, are held by the parser for the next message (mend.py, 1): absorb them,
        or, when more bytes followed in the same read (parsed with the trailer already),
        answer this request and close (RFC 9112 9.3.2: the client retries what was not
        answered). A chunked body always ends with CRLF CRLF; if the read does not, bytes
        of something else came after it."""
        ended_here = nothing_after and data.endswith(b"\r\n\r\n")
        if ended_here and mend.absorb_trailer(self._parser):
            return
        log.info("closing a connection from %s after a chunked request", self.client_ip)
        self._close_after(payload)

    def _close_after(self, payload: Any) -> None:
        """Answer the request whose body is `payload` with Connection: close; drop the
        messages queued behind it."""
        messages = self._messages
        for index, (message, body) in enumerate(messages):
            if body is payload and not isinstance(message, _ErrInfo):
                messages[index] = (message._replace(should_close=True), body)
                while len(messages) > index + 1:
                    messages.pop()
                return
        self.close()  # it is the request in progress: the connection closes after it

    def _answer_before_close(self, data: bytes) -> None:
        """The read held a request with Connection: close and bytes after it: answer the
        requests up to it, ignore the rest (RFC 9112 9.6), instead of one 400."""
        parser = self._walk_parser()
        found = mend.messages_until_close(parser, data)
        if not found:
            return  # aiohttp's 400 stands
        self._messages.pop()  # that 400
        self._request_count -= 1
        self._parser = parser  # a body of the last one may still come
        for message, payload in found:
            self._messages.append((message, payload))
            self._request_count += 1
        payload = found[-1][1]
        self._last_payload = payload if payload is not EMPTY_PAYLOAD else None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _after_declined_upgrade(self, data: bytes, parsed: int) -> None:
        """llhttp dropped what followed an Upgrade aiohttp does not take (h2c): feed it."""
        end = mend.end_of_messages(self._walk_parser(), data, parsed)
        if end is not None and end < len(data):
            self.data_received(data[end:])

    def _walk_parser(self) -> Any:
        return mend.new_parser(
            self,
            self._read_bufsize,
            max_line_size=self.max_line_size,
            max_headers=self.max_headers,
            max_field_size=self.max_field_size,
        )

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
            response = OwnResponse(status=500, text="500 Internal Server Error\n")
            response.force_close()
            return response
        log.info("refused a request from %s: %s %s", request.remote, status, exc)
        text = f"{status} {_PHRASES.get(status, 'Bad Request')}\n"
        response = OwnResponse(status=status, text=text)
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

    #: Called with (request, answer or None if it was cut, the proxy's route) after each
    #: request, when set (decisions, the access log); read per request.
    answered: Any = None

    def __init__(
        self,
        handler: Any,
        *,
        limits: LimitsConfig,
        timeouts: TimeoutsConfig,
        gate: ConnectionGate | None = None,
        **kwargs: Any,
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
        self._gate = gate

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if self._gate is not None:
            self._gate.opened()  # limits.max_connections (SPEC §7)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        if self._gate is not None:
            self._gate.closed()

    def configure(self, limits: LimitsConfig, timeouts: TimeoutsConfig) -> None:
        """A reload's limits and timeouts, for the connections accepted from now on (one in
        progress keeps the parser it was given)."""
        self._limits = limits
        self._timeouts = timeouts
        self._kwargs.update(
            max_line_size=limits.max_request_line,
            max_field_size=limits.max_header_line,
            max_headers=limits.max_headers,
            keepalive_timeout=timeouts.client_idle,
        )

    def cut_all(self) -> None:
        """A second SIGTERM/SIGINT while draining: cancel every request still in flight."""
        for handler in self.connections:
            if isinstance(handler, LeanRequestHandler):
                handler._cut_handler()
            handler.force_close()

    def __call__(self) -> RequestHandler:
        return FrontHandler(
            self, loop=self._loop, limits=self._limits, timeouts=self._timeouts, **self._kwargs
        )
