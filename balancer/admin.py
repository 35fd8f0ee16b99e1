"""The admin API on `admin.listen` (SPEC §3): status, health probes, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from balancer import __version__
from balancer.backend import Backend, Mode
from balancer.config import Config
from balancer.metrics import exposition, make_registry
from balancer.pool import Pool
from balancer.sticky.store import SessionStore

log = logging.getLogger("balancer.admin")

MODES: dict[str, Mode] = {"drain": "draining", "disable": "disabled", "enable": "enabled"}


def backend_status(backend: Backend) -> dict[str, Any]:
    return {
        "name": backend.name,
        "url": backend.url,
        "weight": backend.weight,
        "state": backend.state,
        "breaker": backend.breaker.state if backend.breaker is not None else "closed",
        "routable": backend.routable and not backend.full,
        "breaker_retry_in_seconds": (
            round(backend.breaker.retry_in_seconds, 3) if backend.breaker is not None else 0
        ),
        "in_flight": backend.in_flight,
        # SPEC §3: the requests this backend gave the final answer to, and every attempt.
        "requests_total": backend.requests.duration_count,
        "attempts_total": backend.attempts_total,
        "failures_total": backend.failures_total,
        "latency_ewma_ms": round(backend.latency_ewma * 1000.0, 3),
        "health": backend.health,
        "backup": backend.config.backup,
        "max_connections": backend.config.max_connections,
        "mode": backend.mode,
        "last_check": backend.last_check,
        "consecutive_failures": backend.breaker.consecutive_failures if backend.breaker else 0,
        # Only what the backend reported: /status never shows a null number (SPEC §3).
        "load": {
            key: value
            for key, value in (("cpu", backend.cpu), ("memory", backend.memory))
            if value is not None
        },
    }


def status(
    config: Config, pool: Pool, store: SessionStore, uptime_seconds: float
) -> dict[str, Any]:
    return {
        "version": __version__,
        "strategy": config.strategy,
        "uptime_seconds": round(uptime_seconds, 3),
        "sticky": {
            "mode": config.sticky.mode,
            "store": store.kind,
            "available": store.available,
        },
        "queued": pool.queued,
        "backends": [backend_status(b) for b in pool.backends],
    }


async def _without_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No `Server: Python/... aiohttp/...` on the admin port either (SPEC §4)."""
    response.headers.popall("Server", None)


def make_admin_app(
    config: Config,
    pool: Pool,
    store: SessionStore,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    started = clock()
    registry = make_registry(pool, store)

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status(config, pool, store, clock() - started))

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(request: web.Request) -> web.Response:
        routable = len(pool.candidates)
        body = {"status": "ready" if routable else "unavailable", "routable_backends": routable}
        return web.json_response(body, status=200 if routable else 503)

    async def set_mode(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        backend = pool.by_name(name)
        if backend is None:
            return web.json_response(
                {
                    "error": f"no backend named {name!r}",
                    "backends": [b.name for b in pool.backends],
                },
                status=404,
            )
        action = request.match_info["action"]
        backend.set_mode(MODES[action])
        log.info("backend %s: %s by the admin API", backend.name, MODES[action])
        return web.json_response(backend_status(backend))

    app = web.Application()
    app.on_response_prepare.append(_without_server_header)
    app.router.add_post("/backends/{name}/{action:drain|disable|enable}", set_mode)
    app.router.add_get("/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    return app
