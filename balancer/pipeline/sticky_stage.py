"""The sticky stages (SPEC §2): where a request is pinned, and what is remembered after it.

Before selection, `sticky_plan` reads the request's key and the store's pin (a pinned backend
that cannot take it is forgotten: the strategy picks, and the mapping moves there). After the
backend's head, `stick` writes the mapping before the response goes out, so another instance
sharing Redis honours it on the very next request, and gives the cookie line to add.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from balancer.backend import Backend
from balancer.runtime import Runtime
from balancer.upstream import ResponseHead


@dataclass(slots=True)
class StickyPlan:
    """A request's sticky session: its key, the backend it is pinned to (None: the strategy
    picks, and the key is remembered), and a new cookie to issue (cookie mode)."""

    key: str | None
    pinned: Backend | None
    cookie: str | None


async def sticky_plan(rt: Runtime, request: web.BaseRequest) -> StickyPlan:
    """Where the client is pinned, if anywhere it can still go, and what to remember."""
    sticky = rt.sticky
    assert sticky is not None
    key = sticky.key(request)
    counts = sticky.counts
    if key is None:
        if sticky.mode != "cookie":
            return StickyPlan(None, None, None)
        key, cookie = sticky.new_cookie()  # a new client: it gets the cookie
        counts.new += 1
        return StickyPlan(key, None, cookie)
    name = await sticky.store.get(key)
    if name is None:
        counts.miss += 1
        return StickyPlan(key, None, None)
    pinned = rt.pool.by_name(name)
    if pinned is None or not pinned.takes_sticky or pinned.full:
        counts.repin += 1
        return StickyPlan(key, None, None)  # re-pinned to what the strategy picks (SPEC §2)
    counts.hit += 1
    return StickyPlan(key, pinned, None)


async def stick(
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
