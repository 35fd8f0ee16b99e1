"""`admin.token` (SPEC §3): with a token set, an admin call needs `Authorization: Bearer
<token>`, compared in constant time, or it answers 401 JSON.

Open without it: the two health probes (orchestrators call them) and the dashboard's own
files, `GET /` and `/dashboard/...`, which hold no data: the page asks for the token and sends
it with every call it makes. A worker's admin app on its private Unix socket is the
supervisor's alone (a 0700 directory) and checks none.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

log = logging.getLogger("balancer.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Middleware(Protocol):
    """aiohttp's middleware shape (its own type is in a module that is not public API)."""

    def __call__(self, request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]: ...


OPEN_PATHS = frozenset({"/health/live", "/health/ready"})
LOG_EVERY = 60.0  # seconds: refused calls are logged once in this, with how many


def is_open(request: web.BaseRequest) -> bool:
    path = request.path
    if path in OPEN_PATHS:
        return True
    return request.method in ("GET", "HEAD") and (path == "/" or path.startswith("/dashboard/"))


def authorised(request: web.BaseRequest, token: str) -> bool:
    """One `Authorization: Bearer <token>` field (the scheme in any case, RFC 9110 11.1)."""
    fields = request.headers.getall("Authorization", [])
    if len(fields) != 1:
        return False
    scheme, _, credentials = fields[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = credentials.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token.encode("utf-8", "surrogateescape"))


def require_token(get_token: Callable[[], str]) -> Middleware:
    """The middleware; `get_token` is read per call, so a reload that sets, changes or clears
    the token applies at once."""
    refused = [0, 0.0]  # since the last log line; when that was

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = get_token()
        if not token or is_open(request) or authorised(request, token):
            return await handler(request)
        refused[0] += 1
        now = time.monotonic()
        if now - refused[1] >= LOG_EVERY:
            log.warning(
                "refused %d admin call(s) without the right token (the last: %s %s)",
                refused[0],
                request.method,
                request.path,
            )
            refused[0], refused[1] = 0, now
        return web.json_response(
            {"error": "this admin API needs Authorization: Bearer <admin.token>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="balancer admin"'},
        )

    return middleware
