"""Signed sticky cookies (SPEC §2): the balancer honours only the ids it issued.

An issued value is `<id>.<mac>`: 18 random bytes and the first 16 bytes of
HMAC-SHA256(secret, id), each base64url without padding, 47 characters in all. Any other
value (random, forged, signed with another secret, oversized) fails `verify` before the store
sees it, so a client cannot make the balancer store, or look up in Redis, what it likes.

The secret is `sticky.secret`; when that is empty, a random one is made once per process and,
with Redis, shared through it (`SET NX`, load-or-create) so every instance signs alike.
"""

from __future__ import annotations

import base64
import hmac
import secrets

from balancer.sticky.redis_store import RedisStore
from balancer.sticky.store import SessionStore

ID_BYTES = 18  # 144 random bits: unguessable
MAC_BYTES = 16  # 128 bits of HMAC-SHA256 (truncation as RFC 2104 section 5 allows)
ID_LENGTH = 24  # base64url of 18 bytes, no padding
VALUE_LENGTH = ID_LENGTH + 1 + 22  # "<id>.<mac>"
SECRET_KEY = "balancer:sticky-secret"  # in Redis, beside the mappings' balancer:sticky:*
_DOT = ord(".")


class CookieSigner:
    """Issues and checks cookie values signed with one secret, fixed for the process."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("a cookie secret must not be empty")
        self._secret = secret

    def issue(self) -> str:
        cookie_id = secrets.token_urlsafe(ID_BYTES)
        return f"{cookie_id}.{self._mac(cookie_id.encode('ascii')).decode('ascii')}"

    def verify(self, value: bytes) -> bool:
        """Whether `value` is one we issued; the MACs are compared in constant time."""
        if len(value) != VALUE_LENGTH or value[ID_LENGTH] != _DOT:
            return False
        return hmac.compare_digest(self._mac(value[:ID_LENGTH]), value[ID_LENGTH + 1 :])

    def _mac(self, cookie_id: bytes) -> bytes:
        digest = hmac.digest(self._secret, cookie_id, "sha256")
        return base64.urlsafe_b64encode(digest[:MAC_BYTES]).rstrip(b"=")


async def make_signer(secret: str, store: SessionStore) -> CookieSigner:
    """The process' signer: `sticky.secret`, else the one in Redis (created there with SET NX
    when absent), else a random one of this process. Called once, before serving (SPEC §2)."""
    if secret:
        return CookieSigner(secret.encode("utf-8"))
    mine = secrets.token_urlsafe(32)
    if isinstance(store, RedisStore):
        mine = await store.load_or_create(SECRET_KEY, mine)
    return CookieSigner(mine.encode("utf-8"))
