"""The admin API on `admin.listen` (SPEC §3): status, health probes, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from balancer import __version__
from balancer.backend import Backend
from balancer.config import Config
from balancer.metrics import exposition, make_registry
from balancer.pool import Pool


def backend_status(backend: Backend) -> dict[str, Any]:
    return {
        "name": backend.name,
        "url": backend.url,
        "weight": backend.weight,
        "state": backend.state,
        "breaker": "closed",
        "in_flight": backend.in_flight,
        "requests_total": backend.requests_total,
        "failures_total": backend.failures_total,
        "latency_ewma_ms": round(backend.latency_ewma * 1000.0, 3),
    }


def status(config: Config, pool: Pool, uptime_seconds: float) -> dict[str, Any]:
    return {
        "version": __version__,
        "strategy": config.strategy,
        "uptime_seconds": round(uptime_seconds, 3),
        "sticky": {
            "mode": config.sticky.mode,
            "store": "redis" if config.redis.url else "memory",
            "available": True,
        },
        "backends": [backend_status(b) for b in pool.backends],
    }


def make_admin_app(
    config: Config, pool: Pool, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    started = clock()
    registry = make_registry(pool)

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status(config, pool, clock() - started))

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

    app = web.Application()
    app.router.add_get("/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    return app
