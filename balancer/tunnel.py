"""WebSocket upgrades, tunnelled end to end (SPEC §4).

After the backend's 101 the balancer stops speaking HTTP on both connections and copies bytes
each way until either side closes; it does not parse WebSocket frames. Each direction has flow
control: while one side's socket buffer is full, the balancer stops reading the other side, so
a peer that reads nothing cannot make the balancer buffer what the other one sends. A tunnel
with no bytes either way for timeouts.tunnel_idle is closed (SPEC §2), as HAProxy's
`timeout tunnel`, so abandoned tunnels cannot pile up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from balancer.backend import Attempt, Backend
from balancer.errors import ClientGone
from balancer.http.takeover import take_over
from balancer.response import Sent, response_head
from balancer.upstream import HIGH_WATER, ResponseHead, UpstreamConnection


class _Idle:
    """Closes the tunnel (resolves `closed`) once no byte went either way for `timeout`."""

    def __init__(self, timeout: float, closed: asyncio.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._closed = closed
        self.last = self._loop.time()
        self._timer = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        idle = self._loop.time() - self.last
        if idle < self._timeout:
            self._timer = self._loop.call_later(self._timeout - idle, self._check)
        elif not self._closed.done():
            self._closed.set_result(None)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._timer.cancel()


class _ClientToBackend:
    """The client's bytes, once the tunnel took its connection over: to the backend."""

    def __init__(
        self,
        conn: UpstreamConnection,
        client: asyncio.Transport,
        closed: asyncio.Future[None],
        idle: _Idle,
    ) -> None:
        self._conn = conn
        self._client = client
        self._closed = closed
        self._idle = idle
        conn.on_drained = self._backend_drained

    def received(self, data: bytes) -> None:
        self._idle.touch()
        transport = self._conn.transport
        if transport is not None:
            transport.write(data)
            if self._conn.writing_paused and not self._client.is_closing():
                self._client.pause_reading()  # until the backend drains

    def _backend_drained(self) -> None:
        if not self._client.is_closing():
            self._client.resume_reading()

    def ended(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


async def relay(
    request: web.BaseRequest,
    conn: UpstreamConnection,
    head: ResponseHead,
    attempt: Attempt,
    finish: Callable[[Backend | None, int, float], None],
    idle_timeout: float,
) -> Sent:
    client = request.transport
    if client is None or client.is_closing():
        raise ClientGone()
    client.write(
        response_head(
            101,
            head.reason or "Switching Protocols",
            head.raw_headers,
            http10=False,
            keep_alive=True,
            framing=None,
            keep_upgrade=True,
        )
    )
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    idle = _Idle(idle_timeout, closed)

    paused: list[asyncio.Task[None]] = []

    async def resume_backend_when_client_drains() -> None:
        try:
            await request.writer.drain()
        except ConnectionError:
            return
        finally:
            paused.clear()
        if conn.transport is not None:
            conn.transport.resume_reading()

    def from_backend(data: bytes) -> None:
        idle.touch()
        if data and not client.is_closing():
            client.write(data)
            if client.get_write_buffer_size() > HIGH_WATER and not paused and conn.transport:
                conn.transport.pause_reading()  # until the client drains
                paused.append(asyncio.ensure_future(resume_backend_when_client_drains()))
        elif not data and not closed.done():
            closed.set_result(None)

    conn.start_tunnel(from_backend)
    to_backend = _ClientToBackend(conn, client, closed, idle)
    take_over(request, to_backend.received, to_backend.ended)
    finish(attempt.backend, 101, attempt.started)
    try:
        await closed
    finally:
        idle.cancel()
        for task in paused:
            task.cancel()
        conn.close()
        request.protocol.force_close()
    return Sent(101, keep_alive=False)
