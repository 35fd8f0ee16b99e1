"""The access log stage (SPEC §6): one line per request once its answer went out, called by
the front's request loop (balancer/http/loop.py) only while the log is on (control.py sets
or clears the hook on a reload), so an access log that is off costs one check per request."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from balancer.access_log import Entry
from balancer.backend import Backend
from balancer.http.front import client_address
from balancer.http.parser import parsed_message
from balancer.pipeline.sticky_stage import StickyPlan
from balancer.response import Sent

if TYPE_CHECKING:
    from balancer.proxy import Proxy

# The request's route (the backends tried, the sticky plan), kept on the request by the proxy
# while the log is on.
ROUTE = "balancer.route"
NO_TRIED: list[Backend] = []


class Answered:
    """Called by the front's request loop once each request was answered (or cut: `answer`
    None), while the access log is on: no coroutine of its own around the request."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def __call__(self, request: web.BaseRequest, answer: Any) -> None:
        access = self.proxy.access
        if access is None:
            return
        now = self.proxy.clock()
        try:
            started, tried, plan = request[ROUTE]
        except KeyError:  # refused before routing (a 400): as good as no time at all
            started, tried, plan = now, NO_TRIED, None
        status, body_bytes = 499, 0  # no answer: the client went away
        if answer is not None:
            status = answer.status
            if type(answer) is Sent:
                body_bytes = answer.body_bytes
            elif isinstance(body := getattr(answer, "body", None), bytes):
                body_bytes = len(body)
        message = parsed_message(request)
        duration = now - started
        # tuple.__new__: a NamedTuple's own __new__ is a Python call.
        access.entry(
            tuple.__new__(
                Entry,
                (
                    time.time() - duration,
                    client_address(request) or "-",
                    message.method,
                    message.path,
                    status,
                    body_bytes,
                    duration,
                    tried[-1].name if tried else "-",
                    len(tried),
                    "-",
                    sticky_outcome(plan, tried),
                ),
            )
        )


def sticky_outcome(plan: StickyPlan | None, tried: list[Backend]) -> str:
    """The access log's `sticky`: `-` (off or no key), `hit` (served by its pin), `repin` (its
    pin could not take it), `new` (no pin yet: the strategy picked and it is remembered)."""
    if plan is None or not tried:
        return "-"
    if plan.pinned is None:
        return "new" if plan.key is not None or plan.cookie is not None else "-"
    return "hit" if tried[-1] is plan.pinned else "repin"
