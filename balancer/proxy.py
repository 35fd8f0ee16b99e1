"""The request path: its stages in order, over the Runtime read once (pipeline/ has each).

proxy.handle(request)
  ├─ validate: wire checks (headers.py), a 4xx for what is never forwarded
  ├─ sticky lookup (pipeline/sticky_stage.py)
  ├─ select: pool.pick(exclude=tried), a backend or 503 at once (pipeline/decision.py
  │    says why at debug)
  ├─ forward in backend.attempt(), the one place that counts (backend.py): the head and
  │    the body up (pipeline/upload.py), the response head back
  ├─ sticky remember (pipeline/sticky_stage.py)
  ├─ respond: the one writer (pipeline/respond.py)
  └─ a failure before any response byte went out: retried when SPEC §4 allows
       (pipeline/retry.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from balancer import tunnel
from balancer.access_log import AccessLog, Entry
from balancer.backend import Backend, RequestStats
from balancer.errors import (
    BadBackendResponse,
    BadRequest,
    ClientGone,
    NoBackendAvailable,
    ProxyError,
    StaleConnection,
)
from balancer.headers import origin_form, request_body_framing, request_head, valid_host
from balancer.http.front import client_address
from balancer.http.parser import RawRequestMessage, parsed_message
from balancer.load import parse_load
from balancer.pipeline.decision import log_decision
from balancer.pipeline.respond import answer_error, respond_now, stream
from balancer.pipeline.retry import IDEMPOTENT, may_retry
from balancer.pipeline.sticky_stage import StickyPlan, stick, sticky_plan
from balancer.pipeline.upload import completed, head_or_upload_failure
from balancer.pipeline.upload import upload as upload_body
from balancer.response import Sent, has_body
from balancer.runtime import Runtime

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy  # aiohttp's own dependency

log = logging.getLogger("balancer.proxy")

# The request's route (the backends tried, the sticky plan), kept on the request for the
# access log while it is on (handle_logged).
ROUTE = "balancer.route"
NO_ROUTE: tuple[list[Backend], StickyPlan | None] = ([], None)


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
        self._record = self._finish  # bound once: the stages call it on every request
        self.access: AccessLog | None = None  # on: FrontServer serves with handle_logged
        # Decided once: no per-request cost when debug logging is off.
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._valid_host = ""  # the Host of the last request that passed valid_host

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse | Sent:
        started = self.clock()
        rt = self.runtime  # once: the request finishes on the Runtime it started with
        message = parsed_message(request)  # read straight (see balancer/http/parser.py)
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
            upgrade = headers.get("Upgrade")  # rare: the call only then
            websocket = _websocket_upgrade(upgrade, headers) if upgrade is not None else None
            host = headers.get("Host")
            # Most requests repeat the last valid Host: an equal str is cheaper than the
            # call and the dict lookup (a hash of a fresh str) valid_host would cost.
            if host and host != self._valid_host:
                if not valid_host(host):
                    raise BadRequest(f"invalid Host {host[:100]!r}")
                self._valid_host = host
        except BadRequest as exc:
            return answer_error(self._record, rt, exc, None, started, close=True)
        pool = rt.pool
        client_ip = client_address(request)
        sticky = rt.sticky
        drop_cookie = sticky.own_cookie if sticky is not None else None
        # An HTTP/1.0 client may send no Host: each attempt then names its own backend.
        hostless = host is None
        head = b""
        key = rt.request_key(request) if rt.request_key is not None else None
        plan = await sticky_plan(rt, request) if sticky is not None else None
        tried: list[Backend] = []
        if self.access is not None:
            request[ROUTE] = (tried, plan)
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
                    log_decision(method, request.raw_path, pool, backend, tried, plan)
                if backend is None:
                    # After a failed attempt the answer is that attempt's (SPEC §4).
                    return answer_error(
                        self._record,
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
                        return answer_error(self._record, rt, exc, backend, started, close=True)
                    if not may_retry(rt, exc, method, framing, len(tried), backend):
                        return answer_error(self._record, rt, exc, backend, started)
                    if not retrying:
                        retrying = True
                        rt.retry_budget.in_flight += 1
                    retries = backend.retries
                    retries[exc.reason] = retries.get(exc.reason, 0) + 1
                    log.info(
                        "retrying %s %s after %s: %s", method, request.raw_path, backend.name, exc
                    )
        finally:
            if retrying:
                rt.retry_budget.in_flight -= 1

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
                        self._record,
                        rt.tunnel_idle_timeout,
                    )
                with_body = has_body(message.method, response_head.status)
                if conn.complete or not with_body:
                    sent = respond_now(
                        self._record,
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
                        self._record,
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

    async def handle_logged(self, request: web.BaseRequest) -> web.StreamResponse | Sent:
        """`handle`, and one access log line (SPEC §6) once the answer went out."""
        wall, began = time.time(), self.clock()
        status, body_bytes = 499, 0  # unless an answer comes back: the client went away
        try:
            answer = await self.handle(request)
            status = answer.status
            if isinstance(answer, Sent):
                body_bytes = answer.body_bytes
            elif isinstance(body := getattr(answer, "body", None), bytes):
                body_bytes = len(body)
            return answer
        finally:
            access = self.access
            if access is not None:
                tried, plan = request.get(ROUTE, NO_ROUTE)
                message = parsed_message(request)
                # tuple.__new__: a NamedTuple's own __new__ is a Python call.
                access.entry(
                    tuple.__new__(
                        Entry,
                        (
                            wall,
                            client_address(request) or "-",
                            message.method,
                            message.path,
                            status,
                            body_bytes,
                            self.clock() - began,
                            tried[-1].name if tried else "-",
                            len(tried),
                            "-",
                            sticky_outcome(plan, tried),
                        ),
                    )
                )

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


def sticky_outcome(plan: StickyPlan | None, tried: list[Backend]) -> str:
    """The access log's `sticky`: `-` (off or no key), `hit` (served by its pin), `repin` (its
    pin could not take it), `new` (no pin yet: the strategy picked and it is remembered)."""
    if plan is None or not tried:
        return "-"
    if plan.pinned is None:
        return "new" if plan.key is not None or plan.cookie is not None else "-"
    return "hit" if tried[-1] is plan.pinned else "repin"


def _websocket_upgrade(upgrade: str, headers: CIMultiDictProxy[str]) -> bytes | None:
    """The Upgrade value when the request asks for a WebSocket (the only one tunnelled)."""
    if upgrade.lower() != "websocket":
        return None
    connection = headers.get("Connection", "")
    if "upgrade" not in connection.lower():
        return None
    return upgrade.encode("latin-1")
