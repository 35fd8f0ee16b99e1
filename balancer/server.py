"""One balancer process: build the pool from config, serve, stop gracefully on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from balancer import __version__
from balancer.admin import make_admin_app
from balancer.backend import Backend
from balancer.breaker import Breaker
from balancer.config import Address, BackendConfig, Config
from balancer.fdlimit import raise_fd_limit
from balancer.front import FrontServer
from balancer.front_admin import AdminRunner
from balancer.health import HealthChecker
from balancer.listener import CappedSite, ConnectionGate, bind
from balancer.pool import Pool
from balancer.proxy import Proxy, RetryBudget
from balancer.sticky import Sticky
from balancer.sticky.redis_store import RedisStore
from balancer.sticky.signing import CookieSigner, make_signer
from balancer.sticky.store import MemoryStore, SessionStore
from balancer.strategies import make_strategy
from balancer.upstream import UpstreamPool

log = logging.getLogger("balancer")

BACKLOG = 1024  # where connections past limits.max_connections wait (SPEC §7)


class StartupError(Exception):
    """The balancer cannot start (a port in use, a lenient parser): exit status 1."""


def check_parser() -> None:
    """Refuse to serve on aiohttp's pure-Python parser: it has had most of aiohttp's
    request-smuggling advisories (CVE-2023-47627, CVE-2024-52304), and aiohttp falls back to
    it silently when its C extension is missing or AIOHTTP_NO_EXTENSIONS is set."""
    from aiohttp import web_protocol

    parser = getattr(web_protocol, "HttpRequestParser")  # noqa: B009 (not re-exported)
    if parser.__module__ != "aiohttp._http_parser":
        raise StartupError(
            "aiohttp is using its pure-Python HTTP parser (C extension missing or "
            "AIOHTTP_NO_EXTENSIONS set); refusing to serve with it"
        )


def build_backend(config: Config, bc: BackendConfig, loop: asyncio.AbstractEventLoop) -> Backend:
    upstream = UpstreamPool(
        bc.host,
        bc.port,
        use_tls=bc.scheme == "https",
        connect_timeout=config.timeouts.connect,
        read_timeout=config.timeouts.read,
        loop=loop,
        idle_timeout=config.timeouts.upstream_idle,
    )
    breaker_config = config.circuit_breaker
    backend = Backend(bc, upstream, failure_statuses=frozenset(breaker_config.failure_statuses))
    backend.breaker = Breaker(
        bc.name,
        breaker_config.failure_threshold,
        breaker_config.reset_timeout,
        loop=loop,
        on_change=backend.breaker_changed,
        rise=config.health_check.rise,
    )
    return backend


def make_store(config: Config) -> SessionStore:
    """Redis when `redis.url` is set (shared by every instance), else this process."""
    if config.redis.url:
        return RedisStore(config.redis.url, config.sticky.ttl, call_timeout=config.redis.timeout)
    return MemoryStore(config.sticky.ttl)


def build_pool(config: Config, loop: asyncio.AbstractEventLoop) -> Pool:
    backends = tuple(build_backend(config, bc, loop) for bc in config.backends)
    return Pool(
        backends,
        make_strategy(config.strategy, adaptive=config.adaptive),
        slow_start=config.slow_start,
        queue_size=config.queue.size,
        queue_timeout=config.queue.timeout,
    )


def _url(sockname: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _listen(
    runner: web.BaseRunner,
    address: Address,
    what: str,
    gate: ConnectionGate | None = None,
    bound: list[socket.socket] | None = None,
) -> list[str]:
    """Listen on `address` (or on sockets a supervisor `bound` for us); with a gate, through
    our own accept loop, which holds connections past limits.max_connections in the backlog
    (SPEC §7)."""
    try:
        if gate is not None:
            sockets = bound or await bind(address.host, address.port, backlog=BACKLOG)
            site: web.BaseSite = CappedSite(runner, sockets, gate)
        else:
            site = web.TCPSite(
                runner, address.host, address.port, reuse_address=True, backlog=BACKLOG
            )
        await site.start()
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {address.host}:{address.port} ({what}): {exc.strerror or exc}"
        ) from None
    return [_url(sockname) for sockname in runner.addresses]


async def _listen_admin(
    runner: web.BaseRunner, address: Address, path: str | None
) -> list[str]:
    if path is None:
        return await _listen(runner, address, "admin")
    site = web.UnixSite(runner, path)
    await site.start()
    return [f"unix:{path}"]


async def serve(
    config: Config,
    *,
    announce: Callable[[str], None] = print,
    proxy_sockets: list[socket.socket] | None = None,
    admin_path: str | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully (SPEC §1). The exit status: 0, or
    1 when a second signal cut the requests still in flight.

    A worker of a supervisor gets the listening `proxy_sockets` bound already, and serves
    its admin app on the Unix socket `admin_path` (for the supervisor alone) instead of
    admin.listen: one admin port for the whole balancer (SPEC §6)."""
    check_parser()
    raise_fd_limit(config.limits.max_connections)
    loop = asyncio.get_running_loop()
    pool = build_pool(config, loop)
    store = make_store(config)
    if isinstance(store, RedisStore):
        await store.connect()  # never blocks start: a Redis that is down is retried
    sticky = None
    if config.sticky.mode != "off":
        signer: CookieSigner | None = None
        if config.sticky.mode == "cookie":  # before serving: SPEC §2 loads the secret first
            signer = await make_signer(config.sticky.secret, store)
        sticky = Sticky(config.sticky, store, signer)
    proxy = Proxy(
        pool,
        retries=config.retries,
        retry_budget=RetryBudget(config.retry_budget.percent, config.retry_budget.min_concurrency),
        max_body=config.limits.max_body,
        retry_after=max(1, round(config.health_check.interval)),
        client_body_timeout=config.timeouts.client_body,
        client_send_timeout=config.timeouts.client_send,
        tunnel_idle_timeout=config.timeouts.tunnel_idle,
        hash_on=config.hash.on,
        hash_name=config.hash.name,
        sticky=sticky,
    )
    gate = ConnectionGate(config.limits.max_connections)
    front = FrontServer(proxy.handle, limits=config.limits, timeouts=config.timeouts, gate=gate)
    runner = web.ServerRunner(front, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
    admin_runner = AdminRunner(  # the front's head deadline and limits (SPEC §4)
        make_admin_app(config, pool, store),
        limits=config.limits,
        timeouts=config.timeouts,
        handle_signals=False,
    )
    health = HealthChecker(pool.backends, config.health_check, loop=loop)
    await runner.setup()
    await admin_runner.setup()
    try:
        listeners = [
            ("proxy", url)
            for url in await _listen(runner, config.listen, "proxy", gate, proxy_sockets)
        ]
        listeners += [
            ("admin", url)
            for url in await _listen_admin(admin_runner, config.admin.listen, admin_path)
        ]
        for what, url in listeners:
            announce(f"{what} listening on {url}")
        for backend in pool.backends:
            announce(f"backend {backend.name} {backend.url} weight {backend.weight}")
        sys.stdout.flush()
        _log_start(config, store, listeners)
        health.start()
        await _wait_for_stop(loop)
        log.info(
            "stopping: no new connections; waiting up to %gs for %d request(s) in flight",
            config.shutdown_timeout,
            pool.in_flight,
        )
    finally:
        # aiohttp's cleanup is the numbered shutdown: stop accepting, close idle keep-alive
        # connections, wait for in-flight handlers up to shutdown_timeout, cancel the rest.
        cut: list[int] = []
        deadline = loop.call_later(config.shutdown_timeout, lambda: cut.append(pool.in_flight))
        interrupted = await _drain(loop, runner, front, pool)
        deadline.cancel()
        if cut and cut[0] and not interrupted:
            log.warning("shutdown_timeout passed: cancelled %d request(s) still in flight", cut[0])
        await health.stop()
        await admin_runner.cleanup()
        await store.close()
        pool.close()
    log.info("stopped")
    return 1 if interrupted else 0


def _log_start(config: Config, store: SessionStore, listeners: list[tuple[str, str]]) -> None:
    """One block on stderr, in the log format: what this process serves and how."""
    sticky = config.sticky.mode
    if sticky != "off":
        sticky += f" (store {store.kind})"
    log.info(
        "balancer %s: strategy %s, sticky %s, workers %d, log level %s",
        __version__,
        config.strategy,
        sticky,
        config.workers,
        config.log_level.lower(),
    )
    for what, url in listeners:
        log.info("%s listening on %s", what, url)
    for backend in config.backends:
        extra = " (backup)" if backend.backup else ""
        log.info("backend %s %s weight %d%s", backend.name, backend.url, backend.weight, extra)


async def _drain(
    loop: asyncio.AbstractEventLoop, runner: web.BaseRunner, front: FrontServer, pool: Pool
) -> bool:
    """Let in-flight requests finish (runner.cleanup); a second SIGTERM/SIGINT meanwhile cuts
    them at once (SPEC §1). Returns whether it did."""
    second = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, second.set)
    cleanup = asyncio.ensure_future(runner.cleanup())
    signalled = asyncio.ensure_future(second.wait())
    try:
        await asyncio.wait((cleanup, signalled), return_when=asyncio.FIRST_COMPLETED)
        if cleanup.done():
            await cleanup
            return False
        log.warning("second signal: cutting %d request(s) still in flight", pool.in_flight)
        front.cut_all()
        await cleanup
        return True
    finally:
        signalled.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _wait_for_stop(loop: asyncio.AbstractEventLoop) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP's default action would kill the process; reload arrives with live reload.
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.warning("SIGHUP: live reload is not available yet")
    )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
