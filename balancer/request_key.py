"""What consistent_hash hashes for a request (`hash.on`): the client IP, a header or a cookie."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from balancer.http.front import client_address


def key_getter(on: str, name: str | None) -> Callable[[web.BaseRequest], bytes | None]:
    """What consistent_hash hashes (`hash.on`): the client IP, a header or a cookie. The IP is
    the peer's address, never X-Forwarded-For (any client can write that header)."""
    if on == "header" and name:
        field = name

        def header(request: web.BaseRequest) -> bytes | None:
            value = request.headers.get(field)
            return value.encode("latin-1", "replace") if value is not None else None

        return header
    if on == "cookie" and name:
        cookie = name

        def from_cookie(request: web.BaseRequest) -> bytes | None:
            value = request.cookies.get(cookie)
            return value.encode("utf-8", "replace") if value is not None else None

        return from_cookie

    def client_ip(request: web.BaseRequest) -> bytes | None:
        return client_address(request).encode() or None

    return client_ip
