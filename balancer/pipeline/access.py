"""The access log stage (SPEC §6): one line per request once its answer went out, called by
the front's request loop (balancer/http/loop.py) only while the log is on (control.py sets
or clears the hook on a reload), so an access log that is off costs one check per request."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from balancer.access_log import Entry
from balancer.backend import Backend
from balancer.decisions import Decisions
from balancer.http.front import client_address
from balancer.http.parser import parsed_message
from balancer.pipeline.sticky_stage import StickyPlan
from balancer.response import Sent

if TYPE_CHECKING:
    from balancer.proxy import Proxy

NO_TRIED: list[Backend] = []


class Answered:
    """Called by the front's request loop once each request was answered (or cut: `answer`
    None), with the route the proxy kept (None: refused before routing, a 400): the decision
    goes to the ring, and, while the access log is on, a line to it. No coroutine of its own
    around the request."""

    def __init__(self, proxy: Proxy, decisions: Decisions) -> None:
        self.proxy = proxy
        self.append = decisions.ring.append
        self.clock = proxy.clock

    def answered(self, request: web.BaseRequest, answer: Any, route: Any) -> None:
        now = self.clock()
        status = 499 if answer is None else answer.status  # no answer: the client went away
        if route is not None:
            # Atoms only, nothing that holds the request (its head, the tried list, the plan):
            # a ring of such tuples is untracked by the garbage collector, and costs its
            # collections nothing.
            started, tried, plan, strategy = route
            message = parsed_message(request)
            pin = None
            if plan is not None and plan.key is not None:
                pinned = plan.pinned
                pin = (plan.key, pinned.name if pinned is not None else None)
            self.append(
                (
                    now,
                    started,
                    status,
                    message.method,
                    message.path,
                    strategy,
                    tried[-1].name if tried else None,
                    len(tried),
                    pin,
                )
            )
        access = self.proxy.access
        if access is None:
            return
        if route is not None:
            started, tried, plan, _ = route
        else:
            started, tried, plan = now, NO_TRIED, None
        body_bytes = 0
        if answer is not None:
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
