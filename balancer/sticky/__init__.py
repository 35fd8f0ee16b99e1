"""Sticky sessions (SPEC §2): the same client keeps reaching the same backend.

Every mode maps a key to a backend name in the session store, with the sliding `ttl`:

    cookie  the balancer's own cookie (`sticky.cookie`, a random id it issues, signed)
    learn   the app's own session cookie, learned from the backend's Set-Cookie
    header  a header the client sends (`sticky.header`)
    ip      the client's address (the peer, never X-Forwarded-For)

A key not seen yet goes where the strategy picks and is remembered before the response is
sent, so another instance sharing the Redis store honours it on the very next request. When
the pinned backend cannot take the request (unhealthy, breaker open, disabled) the strategy
picks another and the mapping moves there; a draining backend keeps its sticky clients.

What a client sends is not trusted to size the store (SPEC §2): a cookie-mode value that is not
one we signed (signing.py) is treated as absent, and a key longer than MAX_KEY_BYTES (a header,
a learned cookie) is neither looked up nor stored; the request goes where the strategy picks.
"""

from __future__ import annotations

from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie

from aiohttp import web

from balancer.config import StickyConfig
from balancer.http.front import client_address
from balancer.sticky.signing import CookieSigner
from balancer.sticky.store import SessionStore

MAX_KEY_BYTES = 256  # SPEC §2: a longer key is not stored


def _too_long(value: str) -> bool:
    """Whether a key is longer than MAX_KEY_BYTES in UTF-8 (as the header arrived)."""
    if len(value) > MAX_KEY_BYTES:  # characters never outnumber UTF-8 bytes
        return True
    return not value.isascii() and len(value.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES


class StickyCounts:
    """Sticky lookups since start, by outcome (balancer_sticky_lookups_total): `hit` pinned
    and the pin can take it, `miss` a key the store does not know, `repin` a pin that cannot
    take it (gone, down, full), `new` a new client given a cookie. Outlives reloads."""

    __slots__ = ("hit", "miss", "new", "repin")

    def __init__(self) -> None:
        self.hit = self.miss = self.repin = self.new = 0


class Sticky:
    def __init__(
        self,
        config: StickyConfig,
        store: SessionStore,
        signer: CookieSigner | None = None,
        counts: StickyCounts | None = None,
    ) -> None:
        if config.mode == "cookie" and signer is None:
            raise ValueError("cookie mode needs a CookieSigner")
        self.mode = config.mode
        self.cookie = config.cookie
        self.header = config.header
        self.ttl = config.ttl
        self.store = store
        self.signer = signer
        self.counts = counts if counts is not None else StickyCounts()
        self._prefix = f"{self.mode}:"
        self.own_cookie = config.cookie.encode("latin-1") if self.mode == "cookie" else None
        self._own_pair = f"{config.cookie}=".encode("latin-1")

    def key(self, request: web.BaseRequest) -> str | None:
        """The request's sticky key (without the store's namespace), or None."""
        mode = self.mode
        if mode == "cookie":
            signed = self._signed_cookie(request.raw_headers)
            return None if signed is None else self._prefix + signed.decode("latin-1")
        if mode == "learn":
            value = request.cookies.get(self.cookie)
        elif mode == "header":
            value = request.headers.get(self.header)
        else:
            value = client_address(request)
        if not value or _too_long(value):
            return None
        return self._prefix + value

    def _signed_cookie(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
        """The first value of our cookie, in any Cookie field, that we signed; None if none.

        Read from the raw fields (RFC 6265 5.4: `name=value` pairs split by "; "), so a
        repeated cookie or a second Cookie field cannot hide a valid value or pass a forged one.
        """
        pair = self._own_pair
        signer = self.signer
        assert signer is not None
        for name, value in raw_headers:
            if len(name) == 6 and pair in value and name.lower() == b"cookie":
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(pair):
                        candidate = part[len(pair) :]
                        if signer.verify(candidate):
                            return candidate
        return None

    def new_cookie(self) -> tuple[str, str]:
        """A new signed id for cookie mode: (store key, cookie value)."""
        assert self.signer is not None
        value = self.signer.issue()
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
                    return None if _too_long(morsel.value) else self._prefix + morsel.value
        return None
