"""The request path: validate, pick, forward, stream back, retry when safe.

proxy.handle(request)
  ├─ wire checks (headers.py): reject ambiguous framing, build the forwarded head once
  ├─ pool.pick(exclude=tried)            → a backend, or 503 at once
  ├─ with backend.attempt() as attempt:  ← the one place that counts (backend.py)
  │      upstream: send head + body, read head, stream the body back
  └─ on a failure before any response byte went to the client: retry if SPEC §4 allows
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web

from balancer import tunnel
from balancer.backend import Attempt, Backend
from balancer.errors import BackendTimeout, BadRequest, NoBackendAvailable, ProxyError
from balancer.headers import content_length, request_body_framing, request_head, response_headers
from balancer.pool import Pool
from balancer.upstream import UpstreamConnection

log = logging.getLogger("balancer.proxy")

# RFC 9110 9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
NO_BODY_STATUSES = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RetryBudget:
    """Retries in flight at most `percent` of requests in flight, but `minimum` always."""

    def __init__(self, percent: float, minimum: int) -> None:
        self.fraction = percent / 100.0
        self.minimum = minimum
        self.in_flight = 0

    def allows(self, requests_in_flight: int) -> bool:
        return self.in_flight < max(self.minimum, self.fraction * requests_in_flight)


class Proxy:
    def __init__(
        self,
        pool: Pool,
        *,
        retries: int,
        retry_budget: RetryBudget,
        max_body: int,
        retry_after: int,
        proto: str = "http",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.retries = retries
        self.retry_budget = retry_budget
        self.max_body = max_body
        self.retry_after = str(max(1, math.ceil(retry_after)))
        self.proto = proto
        self.clock = clock

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self.clock()
        raw_headers = request.raw_headers
        method = request.method
        try:
            framing = request_body_framing(request.version, raw_headers, self.max_body)
            websocket = _websocket_upgrade(request)
        except BadRequest as exc:
            return self._answer_error(exc, None, started, close=True)
        pool = self.pool
        host = pool.backends[0].upstream.address.encode()
        head = request_head(
            method,
            request.raw_path,
            raw_headers,
            client_ip=request.remote or "",
            proto=self.proto,
            default_host=host,
            body_framing=framing,
            upgrade=websocket,
        )
        tried: list[Backend] = []
        last_error: ProxyError = NoBackendAvailable()
        retrying = False
        try:
            while True:
                backend = pool.pick(tried)
                if backend is None:
                    # After a failed attempt the answer is that attempt's (SPEC §4).
                    return self._answer_error(last_error, tried[-1] if tried else None, started)
                tried.append(backend)
                try:
                    return await self._attempt(backend, request, head, framing, websocket, started)
                except ProxyError as exc:
                    last_error = exc
                    if not self._may_retry(exc, method, framing, len(tried)):
                        return self._answer_error(exc, backend, started)
                    if not retrying:
                        retrying = True
                        self.retry_budget.in_flight += 1
                    log.info(
                        "retrying %s %s after %s: %s", method, request.raw_path, backend.name, exc
                    )
        finally:
            if retrying:
                self.retry_budget.in_flight -= 1

    def _may_retry(self, exc: ProxyError, method: str, framing: bytes | None, tries: int) -> bool:
        if tries > self.retries:
            return False
        if not exc.sent:
            pass  # never reached a backend: any method may go elsewhere (SPEC §4)
        elif isinstance(exc, BackendTimeout):
            return False  # the backend may still be working on it (SPEC §4)
        elif method not in IDEMPOTENT or framing is not None:
            return False  # bytes went out: only idempotent requests with no body
        return self.retry_budget.allows(self.pool.in_flight)

    async def _attempt(
        self,
        backend: Backend,
        request: web.BaseRequest,
        head: bytes,
        framing: bytes | None,
        websocket: bytes | None,
        started: float,
    ) -> web.StreamResponse:
        with backend.attempt() as attempt:
            conn = await backend.upstream.acquire()
            upload: asyncio.Task[None] | None = None
            try:
                conn.send_head(head, request.method)
                if framing is None:
                    conn.request_sent()
                else:
                    upload = asyncio.ensure_future(_upload(request, conn, framing))
                response_head = await conn.read_head()
                attempt.head_received()
                if upload is not None and not upload.done():
                    # The backend answered before it had the whole body: never reuse this
                    # connection; the client connection closes too (its body is unread).
                    conn.reusable = False
                    upload.cancel()
                    request.protocol.force_close()
                status = response_head.status
                if status == 101:
                    if websocket is None:
                        raise ProxyError("backend switched protocols unasked")
                    return await tunnel.relay(request, conn, response_head, attempt, self._finish)
                response = await self._relay(
                    request, conn, response_head, attempt, started, backend
                )
            except BaseException:
                conn.close()
                raise
            finally:
                if upload is not None:
                    if not upload.done():
                        upload.cancel()
                    with contextlib.suppress(BaseException):
                        await upload
            conn.finish()
            return response

    async def _relay(
        self,
        request: web.BaseRequest,
        conn: UpstreamConnection,
        response_head: tuple[int, str, list[tuple[bytes, bytes]], bool],
        attempt: Attempt,
        started: float,
        backend: Backend,
    ) -> web.StreamResponse:
        status, reason, raw, _ = response_head
        headers = response_headers(raw)
        reason_or_none = reason or None
        if request.method == "HEAD" or status in NO_BODY_STATUSES:
            response = web.StreamResponse(status=status, reason=reason_or_none, headers=headers)
            length = content_length(raw)
            if length is not None and status != 204:
                response.content_length = length  # the size of what GET would give
            self._finish(backend, status, started)
            return response
        if conn.complete:
            # The whole (small) body is here already: one write, one Content-Length.
            response = web.Response(
                status=status, reason=reason_or_none, headers=headers, body=conn.take_body()
            )
            self._finish(backend, status, started)
            return response
        response = web.StreamResponse(status=status, reason=reason_or_none, headers=headers)
        response.content_length = content_length(raw)
        await response.prepare(request)
        try:
            while chunk := await conn.read_chunk():
                await response.write(chunk)
        except ProxyError as exc:
            # The head went out already: the only honest signal left is to cut the
            # connection, so the client sees a short body or a missing last chunk.
            attempt.failed = True
            log.warning(
                "%s %s: %s dropped mid-response: %s",
                request.method,
                request.raw_path,
                backend.name,
                exc,
            )
            request.protocol.force_close()
            conn.close()
        else:
            await response.write_eof()
        self._finish(backend, status, started)
        return response

    def _finish(self, backend: Backend | None, status: int, started: float) -> None:
        stats = backend.requests if backend is not None else self.pool.unrouted
        stats.record(status, self.clock() - started)

    def _answer_error(
        self, error: ProxyError, backend: Backend | None, started: float, *, close: bool = False
    ) -> web.Response:
        status = error.status
        if isinstance(error, BadRequest):
            log.info("refused request: %s", error)
        elif status == 503:
            log.warning("no backend available")
        else:
            log.warning("%s: %s", backend.name if backend else "-", error)
        response = web.Response(status=status, text=f"{status} {_phrase(status)}\n")
        if status == 503:
            response.headers["Retry-After"] = self.retry_after
        if close:
            response.force_close()
        self._finish(backend, status, started)
        return response


async def _upload(request: web.BaseRequest, conn: UpstreamConnection, framing: bytes) -> None:
    """Stream the client's body to the backend, re-framed as the head announced."""
    expect = request.headers.get("Expect")
    if expect is not None and expect.lower() == "100-continue" and request.version >= (1, 1):
        request.transport.write(CONTINUE)  # type: ignore[union-attr]
    content = request.content
    chunked = framing.startswith(b"Transfer-Encoding")
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        if chunked:
            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            await conn.write(chunk)
    if chunked:
        await conn.write(b"0\r\n\r\n")
    conn.request_sent()


def _websocket_upgrade(request: web.BaseRequest) -> bytes | None:
    """The Upgrade value when the request asks for a WebSocket (the only one tunnelled)."""
    upgrade = request.headers.get("Upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return None
    connection = request.headers.get("Connection", "")
    if "upgrade" not in connection.lower():
        return None
    return upgrade.encode("latin-1")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
