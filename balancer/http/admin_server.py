"""The admin app served by the front's connection handler, so the admin port has the same
request-head deadline and limits as the proxy port (SPEC §4: "The admin port has the same
deadline"). aiohttp's own RequestHandler has none: a slowloris held 1,000 admin connections.

The aiohttp private names this needs (`Application._handle`, `_make_request`, `_set_loop`,
the runner's `_make_server`) are why it lives in balancer/http/, with the front's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from balancer.config import LimitsConfig, TimeoutsConfig
from balancer.http.front import HEAD_TOO_LARGE, REQUEST_TIMEOUT, FrontHandler, FrontServer


def _json_answer(status: int, reason: str, message: str) -> bytes:
    """A complete close-delimited answer with a JSON body (SPEC §3: admin errors are JSON)."""
    body = json.dumps({"error": message}).encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (status, reason.encode(), len(body), body)
    )


_JSON_REFUSALS = {
    REQUEST_TIMEOUT: _json_answer(
        408, "Request Timeout", "request head not complete within timeouts.client_header"
    ),
    HEAD_TOO_LARGE: _json_answer(
        431, "Request Header Fields Too Large", "request head over limits.max_head"
    ),
}


class AdminHandler(FrontHandler):
    """One admin connection: the front's, answering its refusals in JSON."""

    __slots__ = ()

    def _refuse(self, answer: bytes, why: str) -> None:
        super()._refuse(_JSON_REFUSALS.get(answer, answer), why)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)
        text = plain.text if isinstance(plain, web.Response) else None
        response = web.json_response(
            {"error": (text or str(plain.status)).strip()}, status=plain.status
        )
        response.force_close()
        return response


class AdminServer(FrontServer):
    """The front's low-level server around an aiohttp Application, making `AdminHandler`s."""

    def __call__(self) -> RequestHandler:
        return AdminHandler(
            self, loop=self._loop, limits=self._limits, timeouts=self._timeouts, **self._kwargs
        )


class AdminRunner(web.AppRunner):
    """aiohttp's AppRunner (startup, cleanup, graceful shutdown of sites) with the front's
    server in place of aiohttp's."""

    def __init__(
        self, app: web.Application, *, limits: LimitsConfig, timeouts: TimeoutsConfig, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._timeouts = timeouts

    async def _make_server(self) -> web.Server:
        app = self.app
        loop = asyncio.get_running_loop()
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        return AdminServer(
            app._handle,
            request_factory=app._make_request,
            loop=loop,
            limits=self._limits,
            timeouts=self._timeouts,
        )
