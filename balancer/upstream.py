"""Keep-alive HTTP/1.1 connections to one backend, parsed with httptools (llhttp, strict).

aiohttp's ClientSession costs ~100 us of Python per request (benchmarks/README.md); this is the
small protocol that replaces it on the hot path. One request at a time per connection, no
pipelining. A connection goes back to the pool only after a complete, cleanly framed,
keep-alive response; after any doubt (short body, timeout, parse error, bytes outside a
response, HEAD) it is closed, never reused (Go's CVE-2024-24791 is that bug).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import httptools

from balancer.errors import (
    BackendDropped,
    BackendTimeout,
    BadBackendResponse,
    ProxyError,
    StaleConnection,
)

if TYPE_CHECKING:
    from balancer.upstream_pool import UpstreamPool

# Response bytes buffered from a backend before we stop reading it (the client is slower).
HIGH_WATER = 256 * 1024


class ResponseHead(NamedTuple):
    status: int
    reason: str
    raw_headers: list[tuple[bytes, bytes]]
    keep_alive: bool


class UpstreamConnection(asyncio.Protocol):
    """One connection to a backend; its state is per response, reset by `send_head`."""

    # Slots: 30 attributes are past what CPython 3.11 keeps inline in an instance (29), which
    # would give every instance a real dict and every attribute access a slower lookup.
    __slots__ = (
        "_answered",
        "_body",
        "_buffered",
        "_busy",
        "_drain_waiter",
        "_error",
        "_head",
        "_informational",
        "_last_read",
        "_loop",
        "_parser",
        "_pool",
        "_raw_headers",
        "_reading_paused",
        "_reason",
        "_skip_body",
        "_timer",
        "_tunnel",
        "_until_eof",
        "_waiter",
        "_waiting",
        "_writing_paused",
        "complete",
        "idle_since",
        "on_drained",
        "reported_load",
        "reusable",
        "reused",
        "transport",
        "upgraded_tail",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._error: ProxyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._waiting = False  # a request is out and its response not complete
        self.idle_since = 0.0
        self.reusable = True
        self.reused = False  # taken from the idle pool for this exchange
        self._answered = False  # a response byte arrived in this exchange
        self._busy = False
        # per response
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.reported_load: bytes | None = None  # an X-Backend-Load header, if any
        self._reason = b""
        self._informational = False
        self._head: ResponseHead | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self.complete = False
        self._skip_body = False
        self._until_eof = False
        # a tunnelled Upgrade: raw bytes from the backend go here
        self.upgraded_tail = b""
        self._tunnel: Callable[[bytes], None] | None = None
        self.on_drained: Callable[[], None] | None = None  # the tunnel's flow control

    def __repr__(self) -> str:
        state = "busy" if self._busy else "idle"
        return f"<UpstreamConnection {self._pool.address} {state} reusable={self.reusable}>"

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        self._pool.forget(self)
        if self._tunnel is not None:
            self._tunnel(b"")
            return
        if self._head is not None and self._until_eof and not self.complete and exc is None:
            self.complete = True  # a close-delimited body ends here (RFC 9112 6.3 item 8)
        elif not self.complete and self._busy:
            if self.reused and not self._answered:
                # A pooled connection the backend closed before any byte of an answer: it
                # timed the connection out as we sent on it (the keep-alive race of RFC 9112
                # 9.3.1), which says nothing of the backend's health.
                self._fail(StaleConnection("backend closed an idle connection as it was reused"))
            else:
                reason = "backend closed the connection" if exc is None else str(exc)
                self._fail(BackendDropped(reason))
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        if self._tunnel is not None:
            self._tunnel(data)
            return
        if not self._busy or self.complete:
            # Bytes outside any response: the framing can no longer be trusted.
            self.close()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded_tail = data[upgrade.args[0] :]
        except httptools.HttpParserError as exc:
            self._fail(BadBackendResponse(f"invalid response from backend: {exc}"))
            self.close()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self.on_drained is not None:
            self.on_drained()

    # -- httptools callbacks ---------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._head is not None:
            # A second response to one request (in the same read as the first): the framing
            # can no longer be trusted. Raising stops llhttp; data_received closes.
            raise BadBackendResponse("backend sent bytes after its response")
        self._raw_headers = []
        self.reported_load = None
        self._reason = b""
        self._until_eof = True  # until a framing field says otherwise

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head is not None:
            # A trailer field of a chunked response: dropped, never merged into the header
            # section that may not have gone out yet (RFC 9110 6.5.1; nginx does the same).
            return
        self._raw_headers.append((name, value))
        if len(name) in (14, 17):
            lname = name.lower()
            if lname == b"content-length" or (
                lname == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked")
            ):
                self._until_eof = False  # RFC 9112 6.3: otherwise the body ends at the close
            elif lname == b"x-backend-load":
                self.reported_load = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response (100, 103): never taken for the final one (SPEC §4).
            self._informational = True
            return
        raw = self._raw_headers
        # tuple.__new__: a NamedTuple's own __new__ is a Python call (on every response).
        self._head = tuple.__new__(
            ResponseHead,
            (status, _reason(self._reason), raw, bool(self._parser.should_keep_alive())),
        )
        if self._skip_body:
            # llhttp cannot be told that a response answers HEAD, so it would wait for the
            # Content-Length bytes that never come: finish here and never reuse this parser.
            self.complete = True
            self.reusable = False
        elif status in (204, 304, 101):
            self._until_eof = False
        elif self._until_eof:
            self.reusable = False  # RFC 9112 6.3: the body ends when the backend closes
        if not self._head.keep_alive:
            self.reusable = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake()

    # -- used by the proxy -----------------------------------------------------------
    def send_head(self, head: bytes, method: str, *, body: bool = False) -> None:
        """Start a request: reset the per-response state and write the head.

        timeouts.read runs from the end of the request (SPEC §4): from now without a `body`,
        else from `request_sent`. While a body goes up, a client that stalls is the client's
        timeout (client_body), and a backend that stops reading is `write`'s."""
        assert self.transport is not None
        self._busy = True
        self._answered = False
        self._head = None
        self._body.clear()
        self._buffered = 0
        self.complete = False
        self._skip_body = method == "HEAD"
        self.transport.write(head)
        if not body:
            self._progress()

    def _progress(self) -> None:
        """The exchange moved (bytes written, drained or read): timeouts.read counts anew.
        The timer is armed once and re-arms itself while the connection is busy (a
        call_later and a cancel per request cost more than the check)."""
        self._last_read = self._loop.time()
        self._waiting = True
        if self._timer is None:
            self._timer = self._loop.call_later(self._pool.read_timeout, self._on_timer)

    async def write(self, data: bytes) -> None:
        """Write request body bytes, waiting while the backend's socket buffer is full; a
        backend that takes none of them for timeouts.read is a BackendTimeout."""
        transport = self.transport
        if transport is None or self._error is not None:
            raise self._error or BackendDropped("backend closed the connection")
        transport.write(data)
        if self._writing_paused:
            timeout = self._pool.read_timeout
            self._drain_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._drain_waiter
            except TimeoutError:
                self._fail(BackendTimeout(f"backend read none of the body for {timeout:g}s"))
                self.close()
            finally:
                self._drain_waiter = None
            if self._error is not None:
                raise self._error

    def request_sent(self) -> None:
        """The whole body is out: the backend's silence counts from now."""
        self._progress()

    @property
    def writing_paused(self) -> bool:
        """The backend's socket buffer is full (asyncio called pause_writing)."""
        return self._writing_paused

    async def read_head(self) -> ResponseHead:
        while self._head is None:
            if self._error is not None:
                raise self._error
            # _wait() inlined: this await is on every request's path.
            self._waiter = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._head

    async def read_chunk(self) -> bytes:
        """The next response body bytes, b"" at the end of the body."""
        while True:
            body = self._body
            if body:
                chunk = body.popleft() if len(body) == 1 else b"".join(body)
                body.clear()
                self._buffered = 0
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    def take_body(self) -> bytes:
        """The whole buffered body of a complete response."""
        body = self._body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        return data

    def start_tunnel(self, sink: Callable[[bytes], None]) -> None:
        """Hand every further byte from the backend to `sink` (b"" at close)."""
        self._cancel_timer()
        self.reusable = False
        self._tunnel = sink
        if self.upgraded_tail:
            sink(self.upgraded_tail)
            self.upgraded_tail = b""

    def finish(self) -> None:
        """The response was consumed: pool the connection if it is clean, else close it."""
        self._busy = False
        self._waiting = False
        if self.reusable and self.complete and self._error is None and self.transport:
            self._pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        self.reusable = False
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- internals --------------------------------------------------------------------
    def _fail(self, error: ProxyError) -> None:
        if self._error is None:
            self._error = error
        self.reusable = False
        self._wake()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._waiting or self.complete or self._error is not None or self._tunnel:
            return  # not waiting on the backend: re-armed by the next request_sent
        timeout = self._pool.read_timeout
        idle = self._loop.time() - self._last_read
        if self._reading_paused:
            idle = 0.0  # the client is slow, not the backend
        if idle < timeout:
            self._timer = self._loop.call_later(timeout - idle, self._on_timer)
            return
        self._fail(BackendTimeout(f"backend made no progress for {timeout:g}s"))
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_REASONS: dict[bytes, str] = {}


def _reason(raw: bytes) -> str:
    """The reason phrase, or "" when it holds a character we would not pass on."""
    reason = _REASONS.get(raw)
    if reason is None:
        text = raw.decode("latin-1")
        reason = text if text.isprintable() else ""
        if len(_REASONS) < 256:  # a backend cannot grow it without bound
            _REASONS[raw] = reason
    return reason
