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
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import HttpVersion, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage

from balancer import tunnel
from balancer.backend import Attempt, Backend, RequestStats
from balancer.errors import (
    BackendTimeout,
    BadBackendResponse,
    BadRequest,
    ClientGone,
    ClientTimeout,
    NoBackendAvailable,
    ProxyError,
    StaleConnection,
)
from balancer.front import OwnResponse, client_address
from balancer.headers import (
    content_length,
    origin_form,
    request_body_framing,
    request_head,
    valid_host,
)
from balancer.load import parse_load
from balancer.pool import Pool
from balancer.response import CHUNKED_END, Sent, chunk, has_body
from balancer.response import response_head as response_head_bytes
from balancer.runtime import Runtime
from balancer.upstream import ResponseHead, UpstreamConnection

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy  # aiohttp's own dependency

log = logging.getLogger("balancer.proxy")

# RFC 9110 9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
HTTP11 = HttpVersion(1, 1)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class StickyPlan:
    """A request's sticky session: its key, the backend it is pinned to (None: the strategy
    picks, and the key is remembered), and a new cookie to issue (cookie mode)."""

    key: str | None
    pinned: Backend | None
    cookie: str | None


class Proxy:
    """The request path over the current Runtime (runtime.py), read once per request."""

    def __init__(
        self,
        runtime: Runtime,
        unrouted: RequestStats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime  # swapped by the control door (control.py) on a reload
        self.unrouted = unrouted  # requests answered without a backend, whatever the Runtime
        self.clock = clock
        # Decided once: no per-request cost when debug logging is off.
        self.debug = log.isEnabledFor(logging.DEBUG)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse | Sent:
        started = self.clock()
        rt = self.runtime  # once: the request finishes on the Runtime it started with
        # The parsed request, read straight: BaseRequest hands each part out through a cached
        # property that costs a Python call the first time (~6% of a request, callgrind).
        message: RawRequestMessage = request._message
        raw_headers = message.raw_headers
        method = message.method
        try:
            if method == "CONNECT":
                raise BadRequest("CONNECT is not supported by a reverse proxy", status=501)
            target = message.path
            if target[:1] != "/":
                target = origin_form(target, raw_headers)
            framing = request_body_framing(message.version, raw_headers, rt.max_body)
            headers = message.headers
            websocket = _websocket_upgrade(headers)
            host = headers.get("Host")
            if host and not valid_host(host):
                raise BadRequest(f"invalid Host {host[:100]!r}")
        except BadRequest as exc:
            return self._answer_error(rt, exc, None, started, close=True)
        pool = rt.pool
        client_ip = client_address(request)
        sticky = rt.sticky
        drop_cookie = sticky.own_cookie if sticky is not None else None
        # An HTTP/1.0 client may send no Host: each attempt then names its own backend.
        hostless = host is None
        head = b""
        key = rt.request_key(request) if rt.request_key is not None else None
        plan = await self._sticky_plan(rt, request) if sticky is not None else None
        tried: list[Backend] = []
        last_error: ProxyError | None = None
        retrying = False
        try:
            while True:
                backend: Backend | None
                if plan is not None and plan.pinned is not None and not tried:
                    backend = plan.pinned
                else:
                    backend = pool.pick(tried, key)
                if backend is None and pool.all_full(tried):
                    backend = await pool.wait_for_slot(tried, key)
                if self.debug:
                    _log_decision(method, request.raw_path, pool, backend, tried, plan)
                if backend is None:
                    # After a failed attempt the answer is that attempt's (SPEC §4).
                    return self._answer_error(
                        rt,
                        last_error or NoBackendAvailable(),
                        tried[-1] if tried else None,
                        started,
                    )
                tried.append(backend)
                try:
                    if hostless or not head:  # else a retry sends the same head
                        head = request_head(
                            method,
                            target,
                            raw_headers,
                            client_ip=client_ip,
                            proto=rt.proto,
                            default_host=backend.upstream.address.encode() if hostless else b"",
                            body_framing=framing,
                            upgrade=websocket,
                            drop_cookie=drop_cookie,
                        )
                    return await self._attempt(
                        rt, backend, request, message, head, framing, websocket, started, plan
                    )
                except ClientGone as exc:
                    self._client_gone(method, request.raw_path, backend, started, exc.detail)
                    return Sent(exc.status, keep_alive=False)
                except asyncio.CancelledError:
                    # The client went away (aiohttp cancels the handler) or shutdown cut it.
                    gone = request.transport is None or request.transport.is_closing()
                    why = "client closed the connection" if gone else "cut at shutdown"
                    self._client_gone(method, request.raw_path, backend, started, why)
                    raise
                except ProxyError as exc:
                    last_error = exc
                    if exc.client_fault:  # the client's (its body): answer and close
                        return self._answer_error(rt, exc, backend, started, close=True)
                    if not self._may_retry(rt, exc, method, framing, len(tried), backend):
                        return self._answer_error(rt, exc, backend, started)
                    if not retrying:
                        retrying = True
                        rt.retry_budget.in_flight += 1
                    log.info(
                        "retrying %s %s after %s: %s", method, request.raw_path, backend.name, exc
                    )
        finally:
            if retrying:
                rt.retry_budget.in_flight -= 1

    async def _sticky_plan(self, rt: Runtime, request: web.BaseRequest) -> StickyPlan:
        """Where the client is pinned, if anywhere it can still go, and what to remember."""
        sticky = rt.sticky
        assert sticky is not None
        key = sticky.key(request)
        if key is None:
            if sticky.mode != "cookie":
                return StickyPlan(None, None, None)
            key, cookie = sticky.new_cookie()  # a new client: it gets the cookie
            return StickyPlan(key, None, cookie)
        name = await sticky.store.get(key)
        pinned = rt.pool.by_name(name) if name is not None else None
        if pinned is not None and (not pinned.takes_sticky or pinned.full):
            pinned = None  # re-pinned to whatever the strategy picks (SPEC §2)
        return StickyPlan(key, pinned, None)

    async def _stick(
        self,
        rt: Runtime,
        plan: StickyPlan,
        backend: Backend,
        response_head: ResponseHead,
        request: web.BaseRequest,
    ) -> bytes | None:
        """Remember the mapping before the response goes out; the cookie line to add."""
        sticky = rt.sticky
        assert sticky is not None
        if sticky.mode == "learn":
            learned = sticky.learned_key(response_head.raw_headers)
            if learned is not None:
                await sticky.store.set(learned, backend.name)
            elif plan.key is not None and plan.pinned is not backend:
                await sticky.store.set(plan.key, backend.name)
            return None
        if plan.key is not None and plan.pinned is not backend:
            await sticky.store.set(plan.key, backend.name)
        if plan.cookie is None:
            return None
        secure = rt.proto == "https" or request.headers.get("X-Forwarded-Proto") == "https"
        return sticky.set_cookie_line(plan.cookie, secure)

    async def _upload(
        self, rt: Runtime, request: web.BaseRequest, conn: UpstreamConnection, framing: bytes
    ) -> None:
        """Stream the client's body to the backend, re-framed as the head announced.

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

    def _may_retry(
        self,
        rt: Runtime,
        exc: ProxyError,
        method: str,
        framing: bytes | None,
        tries: int,
        backend: Backend,
    ) -> bool:
        if tries > rt.retries:
            return False
        if not exc.sent:
            pass  # never reached a backend: any method may go elsewhere (SPEC §4)
        elif isinstance(exc, BackendTimeout):
            return False  # the backend may still be working on it (SPEC §4)
        elif method not in IDEMPOTENT or framing is not None:
            return False  # bytes went out: only idempotent requests with no body
        if not backend.routable:
            # The backend is out (its breaker opened, it is unhealthy or disabled): its share
            # must go somewhere, and that is no storm, so the budget does not apply. When a
            # backend dies with requests in flight, they all fail at once, far past the budget.
            return True
        return rt.retry_budget.allows(rt.pool.in_flight)

    async def _attempt(
        self,
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
        with backend.attempt() as attempt:
            upstream = backend.upstream
            conn = upstream.take_idle() or await upstream.connect()
            upload: asyncio.Task[None] | None = None
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
                    upload = asyncio.ensure_future(self._upload(rt, request, conn, framing))
                    response_head = await _head_or_upload_failure(conn, upload)
                attempt.head_received(response_head.status)
                if conn.reported_load is not None:
                    backend.report_load(*parse_load(b"", conn.reported_load))
                client_keep_alive = not message.should_close
                if upload is not None and not _completed(upload):
                    # The backend answered before it had the whole body, or the body was cut
                    # short: never reuse this connection; the client's closes after the
                    # answer (its body is unread or broken).
                    conn.reusable = False
                    upload.cancel()
                    client_keep_alive = False
                extra = None
                if plan is not None:
                    extra = await self._stick(rt, plan, backend, response_head, request)
                if response_head.status == 101:
                    if websocket is None:
                        raise BadBackendResponse("backend switched protocols unasked")
                    return await tunnel.relay(
                        request,
                        conn,
                        response_head,
                        attempt,
                        self._finish,
                        rt.tunnel_idle_timeout,
                    )
                with_body = has_body(message.method, response_head.status)
                if conn.complete or not with_body:
                    sent = self._respond_now(
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
                    sent = await self._stream(
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
                        await upload
            conn.finish()
            return sent

    def _respond_now(
        self,
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
        if body is not None:
            transport.writelines((head, body))
        else:
            transport.write(head)
        self._finish(backend, status, started)
        return Sent(status, keep_alive)

    async def _stream(
        self,
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
        try:
            while data := await conn.read_chunk():
                if transport.is_closing():
                    raise ClientGone()
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
        self._finish(backend, status, started)
        return Sent(status, keep_alive)

    def _client_gone(
        self, method: str, path: str, backend: Backend, started: float, why: str
    ) -> None:
        """SPEC §4: counted as 499 (nginx's convention) and logged at INFO; the attempt was
        not the backend's failure (backend.Attempt leaves the breaker alone)."""
        log.info("499 %s %s via %s: %s", method, path, backend.name, why or "client gone")
        self._finish(backend, 499, started)

    def _finish(self, backend: Backend | None, status: int, started: float) -> None:
        stats = backend.requests if backend is not None else self.unrouted
        stats.record(status, self.clock() - started)

    def _answer_error(
        self,
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
        response = OwnResponse(status=status, text=f"{status} {_phrase(status)}\n")
        if status == 503:
            response.headers["Retry-After"] = rt.retry_after
        if close:
            response.force_close()
        self._finish(backend, status, started)
        return response


async def _head_or_upload_failure(
    conn: UpstreamConnection, upload: asyncio.Task[None]
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


def _log_decision(
    method: str,
    path: str,
    pool: Pool,
    backend: Backend | None,
    tried: list[Backend],
    plan: StickyPlan | None,
) -> None:
    """`--log-level debug`: the pick and why every other backend was not a candidate."""
    candidates = pool.candidates
    excluded = []
    for other in pool.backends:
        if other is backend:
            continue
        if other in tried:
            reason = "tried"
        elif other not in candidates:
            reason = _why_not(other)
        elif other.full:
            reason = "full"
        else:
            continue
        excluded.append(f"{other.name}={reason}")
    pinned = plan.pinned.name if plan is not None and plan.pinned is not None else None
    log.debug(
        "route %s %s -> %s%s; excluded: %s",
        method,
        path,
        backend.name if backend is not None else "none",
        f" (sticky pin {pinned})" if pinned else "",
        ", ".join(excluded) or "none",
    )


def _why_not(backend: Backend) -> str:
    """The rule that keeps a backend out of the candidates (SPEC §3's names)."""
    if backend.state != "healthy":
        return backend.state  # unhealthy, draining, disabled
    if backend.weight == 0:
        return "weight_0"
    if backend.breaker is not None and not backend.breaker.admits_new:
        return "breaker_open"
    return "backup"


def _completed(upload: asyncio.Task[None]) -> bool:
    """Whether the whole body went up: only then may the connection serve another request."""
    return upload.done() and not upload.cancelled() and upload.exception() is None


def _websocket_upgrade(headers: CIMultiDictProxy[str]) -> bytes | None:
    """The Upgrade value when the request asks for a WebSocket (the only one tunnelled)."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return None
    connection = headers.get("Connection", "")
    if "upgrade" not in connection.lower():
        return None
    return upgrade.encode("latin-1")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
