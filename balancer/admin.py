"""The admin API on `admin.listen` (SPEC §3): status, health probes, metrics, the dashboard."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from balancer import __version__, dashboard
from balancer.admin_auth import Middleware, require_token
from balancer.alerts import DISABLED, AlertsCollector, AlertService
from balancer.backend import Backend, Mode
from balancer.control import Control
from balancer.decisions import SIZE as DECISIONS
from balancer.metrics import exposition, make_registry
from balancer.peer_link import BadEvent, apply_events, parse_events
from balancer.sticky.table import read_table, repin
from balancer.window import Sampler, local_snapshot

log = logging.getLogger("balancer.admin")

MODES: dict[str, Mode] = {"drain": "draining", "disable": "disabled", "enable": "enabled"}

# RFC 9110 9.2.1: the methods that change nothing. Any other method from a foreign origin is
# refused (SPEC §3 names POST, PUT and DELETE; PATCH and the rest are no safer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _origin_parts(origin: str) -> tuple[str, str, str] | None:
    """(scheme, host, port) of an RFC 6454 §6.2 serialised origin, scheme and host lowered,
    the port as written; None for anything else (`null`, a path, userinfo)."""
    scheme, sep, authority = origin.partition("://")
    if not sep or not scheme or any(c in authority for c in "/?#@\\ "):
        return None
    host_port = _host_port(authority)
    return None if host_port is None else (scheme.lower(), *host_port)


def _host_port(authority: str) -> tuple[str, str] | None:
    """(host lowered, ":port" as written or ""), None when there is no host."""
    if authority.startswith("["):  # an IPv6 literal (RFC 3986 3.2.2)
        end = authority.find("]") + 1
        host, rest = authority[:end], authority[end:]
        if not end or (rest and not rest.startswith(":")):
            return None
    else:
        host, colon, port = authority.partition(":")
        rest = colon + port
    return (host.lower(), rest) if host else None


def same_origin(request: web.BaseRequest) -> bool:
    """Whether the request's one `Origin` is the admin's own: its scheme followed by the
    request's own `Host` (SPEC §3), so the dashboard passes however the port was reached.
    Scheme and host compare case-insensitively (RFC 6454 §6.2 lowers them), the port exactly;
    several Origin or Host fields, `null` or a missing Host are another origin."""
    origins = request.headers.getall("Origin")
    hosts = request.headers.getall("Host", [])
    if len(origins) != 1 or len(hosts) != 1 or not hosts[0]:
        return False
    theirs = _origin_parts(origins[0])
    ours = _host_port(hosts[0])
    return theirs is not None and ours is not None and theirs == (request.scheme, *ours)


@web.middleware
async def refuse_foreign_origins(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page on another site must not drain a backend through the visitor's browser (a
    cross-site POST needs no CORS preflight): a state-changing call that carries a foreign
    `Origin` is refused before anything else is looked at (SPEC §3). A call without `Origin`
    (curl, scripts) is not a browser's and passes."""
    if request.method not in SAFE_METHODS and "Origin" in request.headers:
        if not same_origin(request):
            log.warning(
                "refused %s %s from origin %r (host %r)",
                request.method,
                request.path,
                ",".join(request.headers.getall("Origin")),
                request.headers.get("Host"),  # not request.host: it may resolve a name
            )
            return web.json_response(
                {"error": "cross-origin request refused: Origin is not this admin API's"},
                status=403,
            )
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path 404, wrong method 405) as JSON with a message,
    like every admin error (SPEC §3)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        if "Allow" in exc.headers:  # a 405 names the methods allowed (RFC 9110 15.5.6)
            message = f"{request.method} is not allowed here: use {exc.headers['Allow']}"
        response = web.json_response({"error": message}, status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


# What GET / answers a client that asks for JSON (the dashboard otherwise): every endpoint.
ENDPOINTS = (
    ("GET", "/", "the dashboard (HTML); this index with Accept: application/json"),
    ("GET", "/dashboard/{file}", "the dashboard's script and style sheet"),
    ("GET", "/status", "JSON: strategy, sticky store, every backend's state and counters"),
    ("GET", "/metrics", "Prometheus text format"),
    ("GET", "/series", "the last five minutes of traffic per backend, every 2 s"),
    ("GET", "/decisions", "JSON: the last routing decisions of real requests, newest first"),
    ("GET", "/sticky", "JSON: the sticky table, counts per backend"),
    ("GET", "/alerts", "JSON: the alerts firing now and those resolved recently"),
    ("GET", "/health/live", "200 while the process runs"),
    ("GET", "/health/ready", "200 when at least one backend is routable, else 503"),
    ("POST", "/backends/{name}/drain", "no new requests but existing sticky sessions"),
    ("POST", "/backends/{name}/disable", "no requests at all"),
    ("POST", "/backends/{name}/enable", "back into rotation"),
    ("POST", "/reload", "re-read the config file: 200 once it serves, or 400 with every problem"),
)


def index() -> dict[str, Any]:
    endpoints = [{"method": m, "path": p, "what": what} for m, p, what in ENDPOINTS]
    return {"balancer": __version__, "endpoints": endpoints}


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


def status(control: Control, uptime_seconds: float) -> dict[str, Any]:
    runtime = control.runtime
    assert runtime is not None
    config, pool, store = runtime.config, runtime.pool, control.store
    # The running config's backends in file order, then those removed by a reload that
    # still have requests in flight (they go when those end, SPEC §3).
    backends = (*pool.backends, *control.registry.retiring)
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
        "reloads": {"ok": control.reloads_ok, "failed": control.reloads_failed},
        "backends": [backend_status(b) for b in backends],
    }


async def _without_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No `Server: Python/... aiohttp/...` on the admin port either (SPEC §4)."""
    response.headers.popall("Server", None)


MAX_LIMIT = 1000  # /sticky entries at most in one answer


def _limit(given: list[str], default: int = 100) -> int:
    if not given:
        return default
    if len(given) > 1:
        raise ValueError("limit: give it once")
    if not given[0].isdigit() or not 0 <= int(given[0]) <= MAX_LIMIT:
        raise ValueError(f"limit: expected a whole number from 0 to {MAX_LIMIT}, got {given[0]!r}")
    return int(given[0])


def _repin_asked(body: bytes) -> tuple[bool, bool]:
    """An action's optional JSON body: `{"repin": true}` (SPEC §3), or nothing; and whether
    only this process's own copies are to follow (`"local_only": true`: what a supervisor
    asks of the workers that did not re-pin the shared store)."""
    if not body.strip():
        return False, False
    try:
        parsed = json.loads(body)
    except ValueError:
        raise ValueError('the body must be JSON, e.g. {"repin": true}') from None
    if not isinstance(parsed, dict) or set(parsed) - {"repin", "local_only"}:
        raise ValueError('the body may only hold {"repin": true | false}')
    repin_value, local_only = parsed.get("repin", False), parsed.get("local_only", False)
    if not isinstance(repin_value, bool) or not isinstance(local_only, bool):
        raise ValueError("repin: expected true or false")
    return repin_value, local_only


async def _repin(control: Control, drained: Backend, local_only: bool = False) -> int:
    """The drained backend's sticky sessions, each to the strategy's pick among the others."""
    runtime = control.runtime
    assert runtime is not None
    if runtime.sticky is None:
        return 0
    pool = runtime.pool

    def choose() -> str | None:
        backend = pool.pick((drained,))
        return backend.name if backend is not None else None

    moved = await repin(control.store, drained.name, choose, local_only=local_only)
    log.info("backend %s: %d sticky session(s) re-pinned by the admin API", drained.name, moved)
    return moved


def make_admin_app(
    control: Control,
    *,
    clock: Callable[[], float] = time.monotonic,
    peer: bool = False,
    sampler: Sampler | None = None,
    alerts: AlertService | None = None,
) -> web.Application:
    """The admin API (SPEC §3). `peer`: a worker's app, on its private Unix socket, which also
    takes the supervisor's health and breaker events (peer_link) and gives it its counters
    (`/totals`, which the supervisor's sampler sums); it has no /alerts (its supervisor's)."""
    started = clock()
    registry = make_registry(control, peer=peer)
    if alerts is not None:
        registry.register(AlertsCollector(alerts.engine))

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status(control, clock() - started))

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(request: web.Request) -> web.Response:
        assert control.runtime is not None
        routable = len(control.runtime.pool.candidates)
        body = {"status": "ready" if routable else "unavailable", "routable_backends": routable}
        return web.json_response(body, status=200 if routable else 503)

    def no_such(what: str, given: str, known: list[str], key: str) -> web.Response:
        return web.json_response({"error": f"no {what} {given!r}", key: known}, status=404)

    async def set_mode(request: web.Request) -> web.Response:
        assert control.runtime is not None
        pool = control.runtime.pool
        name = request.match_info["name"]
        backend = pool.by_name(name)
        if backend is None:
            return no_such("backend named", name, [b.name for b in pool.backends], "backends")
        action = request.match_info["action"]
        if action not in MODES:
            return no_such("backend action", action, list(MODES), "actions")
        if request.method != "POST":
            return web.json_response(
                {"error": f"{request.method} does not change a backend: use POST {request.path}"},
                status=405,
                headers={"Allow": "POST"},
            )
        try:
            repin_asked, local_only = _repin_asked(await request.read())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if repin_asked and action != "drain":
            return web.json_response({"error": "repin goes with drain only"}, status=400)
        backend.set_mode(MODES[action])
        log.info("backend %s: %s by the admin API", backend.name, MODES[action])
        body = backend_status(backend)
        if repin_asked:
            body["repinned"] = await _repin(control, backend, local_only)
        return web.json_response(body)

    async def decisions(request: web.Request) -> web.Response:
        try:
            limit = _limit(request.query.getall("limit", []), default=DECISIONS)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        proxy = control.proxy
        assert proxy is not None
        return web.json_response({"decisions": proxy.decisions.as_json(proxy.clock(), limit)})

    async def sticky_table(request: web.Request) -> web.Response:
        runtime = control.runtime
        assert runtime is not None
        if runtime.sticky is None:
            return web.json_response({"error": "sticky sessions are off (sticky.mode)"}, status=404)
        try:
            limit = _limit(request.query.getall("limit", []))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        only = request.query.get("backend")
        if only is not None and runtime.pool.by_name(only) is None:
            names = [b.name for b in runtime.pool.backends]
            return no_such("backend named", only, names, "backends")
        table = await read_table(control.store, limit=limit, only=only)
        return web.json_response(table.as_json())

    # The Origin check first: before anything else is looked at, a token included (SPEC §3).
    # A worker's app (peer) is on a socket only its supervisor can reach: no token there.
    middlewares: list[Middleware] = [refuse_foreign_origins, json_errors]
    if not peer:
        middlewares.insert(1, require_token(lambda: control.config.admin.token))
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(_without_server_header)

    async def reload(request: web.Request) -> web.Response:
        outcome = await control.reload()
        return web.json_response(outcome.as_json(), status=200 if outcome.ok else 400)

    async def peer_events(request: web.Request) -> web.Response:
        try:
            events = parse_events(await request.read())
        except BadEvent as exc:
            return web.json_response({"error": f"bad peer events: {exc}"}, status=400)
        apply_events(control.registry.backends, events)
        return web.json_response({"applied": len(events)})

    async def totals(request: web.Request) -> web.Response:
        registry = control.registry
        backends = (*registry.backends.values(), *registry.retiring)
        snapshot = local_snapshot(backends, registry.unrouted)
        return web.json_response({name: t.as_json() for name, t in snapshot.items()})

    async def series(request: web.Request) -> web.Response:
        return web.json_response(sampler.series() if sampler is not None else {})

    app.router.add_get("/sticky", sticky_table)
    app.router.add_get("/decisions", decisions)

    async def get_alerts(request: web.Request) -> web.Response:
        return web.json_response(alerts.as_json() if alerts is not None else DISABLED)

    if peer:
        app.router.add_post("/peer/events", peer_events)
        app.router.add_get("/totals", totals)
    else:
        app.router.add_get("/series", series)
        app.router.add_get("/alerts", get_alerts)
        dashboard.add_routes(app, index)
    app.router.add_post("/reload", reload)
    app.router.add_route("*", "/backends/{name}/{action}", set_mode)
    app.router.add_get("/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    return app
