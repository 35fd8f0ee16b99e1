"""The request path: its stages in order, over the Runtime read once (pipeline/ has each).

proxy.handle(request)
  ├─ validate: wire checks (headers.py), a 4xx for what is never forwarded
  ├─ sticky lookup (pipeline/sticky_stage.py)
  ├─ select: pool.pick(exclude=tried), a backend or 503 at once (pipeline/decision.py
  │    says why at debug)
  ├─ forward in backend.attempt(), the one place that counts (backend.py): the head and
  │    the body up (pipeline/upload.py), the response head back
  ├─ sticky remember (pipeline/sticky_stage.py)
  ├─ forward: one attempt (pipeline/forward.py)
  ├─ respond: the one writer (pipeline/respond.py)
  └─ a failure before any response byte went out: retried when SPEC §4 allows
       (pipeline/retry.py)
Proxy.answered: the access log line, called by the front after each (pipeline/access.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from balancer.access_log import AccessLog
from balancer.backend import Backend, RequestStats
from balancer.decisions import Decisions
from balancer.errors import (
    BadRequest,
    ClientGone,
    NoBackendAvailable,
    ProxyError,
)
from balancer.headers import origin_form, request_body_framing, request_head, valid_host
from balancer.http.front import client_address, connection_of
from balancer.http.parser import parsed_message
from balancer.pipeline.access import Answered
from balancer.pipeline.decision import log_decision
from balancer.pipeline.forward import forward
from balancer.pipeline.respond import answer_error
from balancer.pipeline.retry import may_retry
from balancer.pipeline.sticky_stage import sticky_plan
from balancer.response import Sent
from balancer.runtime import Runtime

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy  # aiohttp's own dependency

log = logging.getLogger("balancer.proxy")


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
        self.access: AccessLog | None = None  # on: the front calls `answered` after each
        self.decisions = Decisions()
        # The front calls it after each request (a bound method: cheaper to call than an
        # object's __call__).
        self.answered = Answered(self, self.decisions).answered
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
        connection = connection_of(request)
        client_ip = connection.client_ip if connection is not None else client_address(request)
        sticky = rt.sticky
        drop_cookie = sticky.own_cookie if sticky is not None else None
        # An HTTP/1.0 client may send no Host: each attempt then names its own backend.
        hostless = host is None
        head = b""
        key = rt.request_key(request) if rt.request_key is not None else None
        plan = await sticky_plan(rt, request) if sticky is not None else None
        tried: list[Backend] = []
        if connection is not None:
            connection.route = (started, tried, plan, rt.config.strategy)
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
                    return await forward(
                        self._record,
                        rt,
                        backend,
                        request,
                        message,
                        head,
                        framing,
                        websocket,
                        started,
                        plan,
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


def _websocket_upgrade(upgrade: str, headers: CIMultiDictProxy[str]) -> bytes | None:
    """The Upgrade value when the request asks for a WebSocket (the only one tunnelled)."""
    if upgrade.lower() != "websocket":
        return None
    connection = headers.get("Connection", "")
    if "upgrade" not in connection.lower():
        return None
    return upgrade.encode("latin-1")
