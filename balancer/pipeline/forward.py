"""The forward stage: one attempt on one backend, inside `backend.attempt()` (the one place
that counts, backend.py): the head and the body up (upload.py), the response head back, the
sticky mapping remembered (sticky_stage.py), then the answer (respond.py) or a WebSocket
tunnel (tunnel.py). A failure raises, for the proxy's retry rule (retry.py)."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from balancer import tunnel
from balancer.backend import Backend
from balancer.errors import BadBackendResponse, StaleConnection
from balancer.http.parser import RawRequestMessage
from balancer.load import parse_load
from balancer.pipeline.respond import Record, respond_now, stream
from balancer.pipeline.retry import IDEMPOTENT
from balancer.pipeline.sticky_stage import StickyPlan, stick
from balancer.pipeline.upload import completed, head_or_upload_failure
from balancer.pipeline.upload import upload as upload_body
from balancer.response import Sent, has_body
from balancer.runtime import Runtime


async def forward(
    record: Record,
    rt: Runtime,
    backend: Backend,
    request: web.BaseRequest,
    message: RawRequestMessage,
    head: bytes,
    framing: bytes | None,
    websocket: bytes | None,
    started: float,
    plan: StickyPlan | None,
) -> Sent:
    """One attempt on `backend`: the head (and body) up, the response head back, the sticky
    mapping remembered, then the answer written (respond) or the tunnel opened."""
    with backend.attempt() as attempt:
        upstream = backend.upstream
        conn = upstream.take_idle() or await upstream.connect()
        upload: asyncio.Task[int] | None = None
        try:
            conn.send_head(head, message.method, body=framing is not None)
            if framing is None:
                try:
                    response_head = await conn.read_head()
                except StaleConnection:
                    if message.method not in IDEMPOTENT:
                        raise  # it may have been acted on: not replayed (SPEC §4)
                    # The pooled connection had gone stale: the same request, once more,
                    # on a fresh connection to the same backend (as browsers and Go's
                    # http.Transport do); a failure there is the backend's.
                    conn.close()
                    conn = await upstream.connect()
                    conn.send_head(head, message.method)
                    response_head = await conn.read_head()
            else:
                upload = asyncio.ensure_future(upload_body(rt, request, conn, framing))
                response_head = await head_or_upload_failure(conn, upload)
            attempt.head_received(response_head.status)
            if conn.reported_load is not None:
                backend.report_load(*parse_load(b"", conn.reported_load))
            client_keep_alive = not message.should_close
            if upload is not None and not completed(upload):
                # The backend answered before it had the whole body, or the body was cut
                # short: never reuse this connection; the client's closes after the
                # answer (its body is unread or broken).
                conn.reusable = False
                upload.cancel()
                client_keep_alive = False
            extra = None
            if plan is not None:
                extra = await stick(rt, plan, backend, response_head, request)
            if response_head.status == 101:
                if websocket is None:
                    raise BadBackendResponse("backend switched protocols unasked")
                return await tunnel.relay(
                    request,
                    conn,
                    response_head,
                    attempt,
                    record,
                    rt.tunnel_idle_timeout,
                )
            with_body = has_body(message.method, response_head.status)
            if conn.complete or not with_body:
                sent = respond_now(
                    record,
                    request,
                    message,
                    with_body,
                    conn,
                    response_head,
                    backend,
                    started,
                    client_keep_alive,
                    extra,
                )
            else:
                sent = await stream(
                    record,
                    rt,
                    request,
                    conn,
                    response_head,
                    attempt,
                    backend,
                    started,
                    client_keep_alive,
                    extra,
                )
        except BaseException:
            conn.close()
            raise
        finally:
            if upload is not None:
                if not upload.done():
                    upload.cancel()
                with contextlib.suppress(BaseException):
                    backend.bytes_in += await upload
        conn.finish()
        return sent
