"""The upload stage: the client's body to the backend, raced against the backend's answer.

A body streams up re-framed as the head announced; the client's failures are translated here
(408 for a stall past timeouts.client_body, 413 over limits.max_body, 400 for a malformed
chunked body). The backend may answer before it has the whole body; whichever comes first,
a body cut short is never forgotten and its connection never serves another request.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import HttpVersion, web

from balancer.errors import BadRequest, ClientGone, ClientTimeout, ProxyError
from balancer.http.parser import HttpProcessingError
from balancer.runtime import Runtime
from balancer.upstream import ResponseHead, UpstreamConnection

HTTP11 = HttpVersion(1, 1)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def upload(
    rt: Runtime, request: web.BaseRequest, conn: UpstreamConnection, framing: bytes
) -> int:
    """Stream the client's body to the backend, re-framed as the head announced; returns the
    body bytes it sent.

    Failures are translated here: a client that stalls longer than timeouts.client_body
    gets 408, a chunked body over limits.max_body 413, a malformed one 400 (aiohttp's
    parser says which); the backend's failures come from conn.write as they are.
    """
    expect = request.headers.get("Expect")
    if expect is not None and expect.lower() == "100-continue" and request.version >= HTTP11:
        request.transport.write(CONTINUE)  # type: ignore[union-attr]
    content = request.content
    chunked = framing.startswith(b"Transfer-Encoding")
    max_body, idle = rt.max_body, rt.client_body_timeout
    received = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        except TimeoutError:
            raise ClientTimeout(f"no request body bytes for {idle:g}s") from None
        except HttpProcessingError as exc:
            raise BadRequest(f"malformed request body: {exc.message}") from None
        except ConnectionError:
            raise ClientGone() from None
        if not chunk:
            break
        received += len(chunk)
        if max_body and received > max_body:
            raise BadRequest("request body over limits.max_body", status=413)
        if chunked:
            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            await conn.write(chunk)
    if chunked:
        await conn.write(b"0\r\n\r\n")
    conn.request_sent()
    return received


async def head_or_upload_failure(
    conn: UpstreamConnection, upload: asyncio.Task[int]
) -> ResponseHead:
    """The response head, while the body is still going up; or the upload's own failure.

    A backend may answer before it read the whole body (an early 413, 401); a client may send
    a malformed, oversized or stalled body, which ends the exchange: never wait on one of the
    two alone.
    """
    head = asyncio.ensure_future(conn.read_head())
    try:
        await asyncio.wait((head, upload), return_when=asyncio.FIRST_COMPLETED)
        if upload.done() and not upload.cancelled():
            failure = upload.exception()
            # The client's own failure (a malformed, oversized or stalled body) is its answer
            # even when the backend's head came too; a write the backend refused is not,
            # when the backend answered (an early 413 and a close).
            if failure is not None and (
                not head.done() or (isinstance(failure, ProxyError) and failure.client_fault)
            ):
                raise failure
        return await head
    finally:
        if not head.done():
            head.cancel()
            with contextlib.suppress(BaseException):
                await head


def completed(upload: asyncio.Task[int]) -> bool:
    """Whether the whole body went up: only then may the connection serve another request."""
    return upload.done() and not upload.cancelled() and upload.exception() is None
