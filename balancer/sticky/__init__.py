"""Sticky sessions (SPEC §2): the same client keeps reaching the same backend.

Every mode maps a key to a backend name in the session store, with the sliding `ttl`:

    cookie  the balancer's own cookie (`sticky.cookie`, a random unguessable id it issues)
    learn   the app's own session cookie, learned from the backend's Set-Cookie
    header  a header the client sends (`sticky.header`)
    ip      the client's address (the peer, never X-Forwarded-For)

A key not seen yet goes where the strategy picks and is remembered before the response is
sent, so another instance sharing the Redis store honours it on the very next request. When
the pinned backend cannot take the request (unhealthy, breaker open, disabled) the strategy
picks another and the mapping moves there; a draining backend keeps its sticky clients.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie

from aiohttp import web

from balancer.config import StickyConfig
from balancer.front import client_address
from balancer.sticky.store import SessionStore

COOKIE_ID_BYTES = 18  # 144 random bits, base64url: unguessable


class Sticky:
    def __init__(self, config: StickyConfig, store: SessionStore) -> None:
        self.mode = config.mode
        self.cookie = config.cookie
        self.header = config.header
        self.ttl = config.ttl
        self.store = store
        self._prefix = f"{self.mode}:"
        self.own_cookie = config.cookie.encode("latin-1") if self.mode == "cookie" else None

    def key(self, request: web.BaseRequest) -> str | None:
        """The request's sticky key (without the store's namespace), or None."""
        mode = self.mode
        if mode in ("cookie", "learn"):
            value = request.cookies.get(self.cookie)
        elif mode == "header":
            value = request.headers.get(self.header)
        else:
            value = client_address(request)
        return self._prefix + value if value else None

    def new_cookie(self) -> tuple[str, str]:
        """A new id for cookie mode: (store key, cookie value)."""
        value = secrets.token_urlsafe(COOKIE_ID_BYTES)
        return self._prefix + value, value

    def set_cookie_line(self, value: str, secure: bool) -> bytes:
        """The balancer's own cookie, one more Set-Cookie line of the response (SPEC §4)."""
        attributes = f"; Path=/; Max-Age={int(self.ttl)}; HttpOnly; SameSite=Lax"
        if secure:
            attributes += "; Secure"
        return f"Set-Cookie: {self.cookie}={value}{attributes}".encode("latin-1")

    def learned_key(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """In learn mode, the app's session cookie value set by this response, as a key."""
        wanted = self.cookie
        for name, value in raw_headers:
            if len(name) == 10 and name.lower() == b"set-cookie":
                parsed: SimpleCookie = SimpleCookie()
                try:
                    parsed.load(value.decode("latin-1"))
                except CookieError:  # a malformed Set-Cookie is the app's, not ours to judge
                    continue
                morsel = parsed.get(wanted)
                if morsel is not None and morsel.value:
                    return self._prefix + morsel.value
        return None
