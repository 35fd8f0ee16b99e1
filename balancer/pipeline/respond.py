"""The one response writer: every answer the client gets is written here.

A backend's response all here already (or without a body) goes out in one write; a body still
arriving is streamed, re-framed for this client (Content-Length, chunked, or close-delimited
for HTTP/1.0), waiting for a slow client up to timeouts.client_send; the balancer's own
answers (4xx, 502-504, 503 with Retry-After) carry no library banner. `record` counts the
answer (the status the client got, the time it took) for /status and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import HttpVersion, web

from balancer.backend import Attempt, Backend
from balancer.errors import BadRequest, ClientGone, ProxyError
from balancer.headers import content_length
from balancer.http.front import OwnResponse
from balancer.http.parser import RawRequestMessage
from balancer.response import CHUNKED_END, Sent, chunk
from balancer.response import response_head as response_head_bytes
from balancer.runtime import Runtime
from balancer.upstream import ResponseHead, UpstreamConnection

log = logging.getLogger("balancer.proxy")
HTTP11 = HttpVersion(1, 1)
Record = Callable[[Backend | None, int, float], None]


def respond_now(
    record: Record,
    request: web.BaseRequest,
    message: RawRequestMessage,
    with_body: bool,
    conn: UpstreamConnection,
    response_head: ResponseHead,
    backend: Backend,
    started: float,
    keep_alive: bool,
    extra: bytes | None,
) -> Sent:
    """Send a response that is all here already (or has no body): one write."""
    status, reason, raw, _ = response_head
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone()
    body = conn.take_body() if with_body else None
    head = response_head_bytes(
        status,
        reason,
        raw,
        http10=message.version < HTTP11,
        keep_alive=keep_alive,
        framing=b"Content-Length: %d" % len(body) if body is not None else None,
        length_for_head=body is None and status != 204,  # HEAD and 304 keep it
        extra=extra,
    )
    sent = 0
    if body is not None:
        transport.writelines((head, body))
        sent = len(body)
        backend.bytes_out += sent
    else:
        transport.write(head)
    record(backend, status, started)
    return Sent(status, keep_alive, sent)


async def stream(
    record: Record,
    rt: Runtime,
    request: web.BaseRequest,
    conn: UpstreamConnection,
    response_head: ResponseHead,
    attempt: Attempt,
    backend: Backend,
    started: float,
    keep_alive: bool,
    extra: bytes | None,
) -> Sent:
    """Stream a response body to the client as it arrives, re-framed."""
    status, reason, raw, _ = response_head
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone()
    method = request.method
    http10 = request.version < HTTP11
    length = content_length(raw)
    chunked = False
    framing: bytes | None
    if length is not None:
        framing = b"Content-Length: %d" % length
    elif not http10:
        framing, chunked = b"Transfer-Encoding: chunked", True
    else:
        framing, keep_alive = None, False  # HTTP/1.0: the end of the body is the close
    transport.write(
        response_head_bytes(
            status,
            reason,
            raw,
            http10=http10,
            keep_alive=keep_alive,
            framing=framing,
            extra=extra,
        )
    )
    writer = request.writer
    sent = 0
    try:
        while data := await conn.read_chunk():
            if transport.is_closing():
                raise ClientGone()
            sent += len(data)
            if chunked:
                transport.writelines(chunk(data))
            else:
                transport.write(data)
            if transport.get_write_buffer_size():
                # The client is slower than the backend: wait for it, but not forever
                # (as nginx's send_timeout); the backend is paused meanwhile.
                try:
                    async with asyncio.timeout(rt.client_send_timeout):
                        await writer.drain()
                except TimeoutError:
                    raise ClientGone("client took no response bytes") from None
    except ProxyError as exc:
        # The head went out already: the only honest signal left is to cut the
        # connection, so the client sees a short body or a missing last chunk.
        if exc.backend_failure:
            attempt.failed = True
            log.warning(
                "%s %s: %s failed mid-response: %s",
                method,
                request.raw_path,
                backend.name,
                exc,
            )
        conn.close()
        keep_alive = False
    except ConnectionError:
        conn.close()  # the client went away: nobody to answer
        keep_alive = False
    else:
        if chunked:
            transport.write(CHUNKED_END)
    backend.bytes_out += sent
    record(backend, status, started)
    return Sent(status, keep_alive, sent)


def answer_error(
    record: Record,
    rt: Runtime,
    error: ProxyError,
    backend: Backend | None,
    started: float,
    *,
    close: bool = False,
) -> web.Response:
    status = error.status
    if isinstance(error, BadRequest):
        log.info("refused request: %s", error)
    elif status == 503:
        log.warning("no backend available")
    else:
        log.warning("%s: %s", backend.name if backend else "-", error)
    response = OwnResponse(status=status, text=f"{status} {phrase(status)}\n")
    if status == 503:
        response.headers["Retry-After"] = rt.retry_after
    if close:
        response.force_close()
    record(backend, status, started)
    return response


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
