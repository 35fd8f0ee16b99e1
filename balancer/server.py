"""One balancer process: build the pool from config, serve, stop gracefully on a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from balancer import __version__
from balancer.access_log import AccessLog
from balancer.admin import MODES, make_admin_app, status
from balancer.alert_webhook import Webhook
from balancer.alerts import AlertService, View, view_of
from balancer.config import Address, Config
from balancer.control import Control
from balancer.fdlimit import raise_fd_limit
from balancer.health import HealthChecker, LocalHealth, target_of
from balancer.http.admin_server import AdminRunner
from balancer.http.front import FrontServer
from balancer.http.parser import uses_c_parser
from balancer.http.site import CappedSite
from balancer.listener import ConnectionGate, bind
from balancer.peer_link import Event, SupervisorLink, apply_events
from balancer.proxy import Proxy
from balancer.registry import Registry
from balancer.window import Sampler, Snapshot, local_snapshot

log = logging.getLogger("balancer")

BACKLOG = 1024  # where connections past limits.max_connections wait (SPEC §7)


class StartupError(Exception):
    """The balancer cannot start (a port in use, a lenient parser): exit status 1."""


def check_parser() -> None:
    """Refuse to serve on aiohttp's pure-Python parser: it has had most of aiohttp's
    request-smuggling advisories (CVE-2023-47627, CVE-2024-52304), and aiohttp falls back to
    it silently when its C extension is missing or AIOHTTP_NO_EXTENSIONS is set."""
    if not uses_c_parser():
        raise StartupError(
            "aiohttp is using its pure-Python HTTP parser (C extension missing or "
            "AIOHTTP_NO_EXTENSIONS set); refusing to serve with it"
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


async def _listen_admin(runner: web.BaseRunner, address: Address, path: str | None) -> list[str]:
    if path is None:
        return await _listen(runner, address, "admin")
    site = web.UnixSite(runner, path)
    await site.start()
    return [f"unix:{path}"]


@dataclass(frozen=True)
class Joining:
    """A worker joining its supervisor's balancer: who it is, where to report its breakers,
    and the modes and backend states to take on before it listens (SPEC §6)."""

    index: int
    supervisor_path: str
    modes: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def _join(control: Control, joining: Joining) -> None:
    backends = control.registry.backends
    for name, action in joining.modes.items():
        if (backend := backends.get(name)) is not None and action in MODES:
            backend.set_mode(MODES[action])
    apply_events(backends, joining.events)


async def serve(
    config: Config,
    *,
    announce: Callable[[str], None] = print,
    proxy_sockets: list[socket.socket] | None = None,
    admin_path: str | None = None,
    config_path: str | None = None,
    overrides: Callable[[Config], Config] = lambda config: config,
    joining: Joining | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully (SPEC §1). The exit status: 0, or
    1 when a second signal cut the requests still in flight.

    A worker of a supervisor gets the listening `proxy_sockets` bound already, and serves
    its admin app on the Unix socket `admin_path` (for the supervisor alone) instead of
    admin.listen: one admin port for the whole balancer (SPEC §6)."""
    check_parser()
    raise_fd_limit(config.limits.max_connections)
    loop = asyncio.get_running_loop()
    link = None if joining is None else SupervisorLink(joining.supervisor_path, joining.index)
    registry = Registry(loop, on_breaker=None if link is None else link.breaker_changed)
    control = Control(
        config, path=config_path, overrides=overrides, registry=registry, quiet=joining is not None
    )
    runtime = await control.first()
    if joining is not None:
        _join(control, joining)
    proxy = Proxy(runtime, registry.unrouted)
    control.proxy = proxy
    gate = ConnectionGate(config.limits.max_connections)
    access = AccessLog(config.access_log.format, config.access_log.path)
    try:
        access.open()  # before serving: a log that cannot be written is the start's error
    except OSError as exc:
        raise StartupError(
            f"cannot open the access log {config.access_log.path}: {exc.strerror}"
        ) from None
    control.access = access
    proxy.access = access if access.on else None
    front = FrontServer(proxy.handle, limits=config.limits, timeouts=config.timeouts, gate=gate)
    front.answered = proxy.answered  # the decisions ring, and the access log when on
    runner = web.ServerRunner(front, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
    control.front, control.gate = front, gate
    sampler = None
    if joining is None:  # a worker's counters are sampled by its supervisor, summed

        async def totals() -> Snapshot:
            return local_snapshot(registry.backends.values(), registry.unrouted)

        sampler = Sampler(totals)
    alerts = None if sampler is None else _alerts(control, sampler)  # a worker's: none
    admin_runner = AdminRunner(  # the front's head deadline and limits (SPEC §4)
        make_admin_app(control, peer=joining is not None, sampler=sampler, alerts=alerts),
        limits=config.limits,
        timeouts=config.timeouts,
        handle_signals=False,
    )
    health = None
    if joining is None:
        targets = map(target_of, runtime.pool.backends)
        sink = LocalHealth(lambda: registry.backends)
        health = HealthChecker(targets, config.health_check, sink, loop=loop)
        control.health = health
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
        for backend in runtime.pool.backends:
            announce(f"backend {backend.name} {backend.url} weight {backend.weight}")
        sys.stdout.flush()
        quiet = logging.DEBUG if joining is not None else logging.INFO
        log_start(config, control.store.kind, listeners, level=quiet)
        if health is not None:
            health.start()
        if sampler is not None:
            sampler.start()
        if alerts is not None:
            alerts.start()
        access.start()
        # What start-up made lives as long as the process: out of the collector's way, so its
        # collections (set off by the request path's allocations) scan only what is young.
        gc.freeze()
        stop_watching = asyncio.Event()
        watcher = loop.create_task(control.watch(stop_watching)) if config.watch else None
        try:
            await _wait_for_stop(loop, control)
        finally:
            stop_watching.set()
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        log.info(
            "stopping: no new connections; waiting up to %gs for %d request(s) in flight",
            config.shutdown_timeout,
            in_flight(control),
        )
    finally:
        # aiohttp's cleanup is the numbered shutdown: stop accepting, close idle keep-alive
        # connections, wait for in-flight handlers up to shutdown_timeout, cancel the rest.
        cut: list[int] = []
        deadline = loop.call_later(config.shutdown_timeout, lambda: cut.append(in_flight(control)))
        interrupted = await _drain(loop, runner, front, control)
        deadline.cancel()
        if cut and cut[0] and not interrupted:
            log.warning("shutdown_timeout passed: cancelled %d request(s) still in flight", cut[0])
        if health is not None:
            await health.stop()
        if sampler is not None:
            await sampler.stop()
        if alerts is not None:
            await alerts.stop()
        if link is not None:
            await link.close()
        await admin_runner.cleanup()
        await control.store.close()
        await access.close()  # what the last requests logged, written
        registry.close()
    log.info("stopped")
    return 1 if interrupted else 0


def _alerts(control: Control, sampler: Sampler) -> AlertService:
    """The alerts of one process (SPEC §6): its own /status and sampler, judged every
    alerts.interval of the running config."""

    async def view() -> View:
        names = {backend.name for backend in control.config.backends}
        return view_of(status(control, 0.0), sampler.over, names)

    return AlertService(lambda: control.config.alerts, view, Webhook())


def log_start(
    config: Config,
    store_kind: str,
    listeners: list[tuple[str, str]],
    *,
    level: int = logging.INFO,
) -> None:
    """One block on stderr, in the log format: what the balancer serves and how (a worker's
    at DEBUG: its supervisor logs the one block of the whole balancer)."""
    sticky = config.sticky.mode
    if sticky != "off":
        sticky += f" (store {store_kind})"
    log.log(
        level,
        "balancer %s: strategy %s, sticky %s, workers %d, log level %s",
        __version__,
        config.strategy,
        sticky,
        config.workers,
        config.log_level.lower(),
    )
    for what, url in listeners:
        log.log(level, "%s listening on %s", what, url)
    for backend in config.backends:
        extra = " (backup)" if backend.backup else ""
        log.log(
            level, "backend %s %s weight %d%s", backend.name, backend.url, backend.weight, extra
        )


def in_flight(control: Control) -> int:
    """Requests in flight to every backend, those retiring after a reload included."""
    registry = control.registry
    return sum(b.in_flight for b in (*registry.backends.values(), *registry.retiring))


async def _drain(
    loop: asyncio.AbstractEventLoop, runner: web.BaseRunner, front: FrontServer, control: Control
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
        log.warning("second signal: cutting %d request(s) still in flight", in_flight(control))
        front.cut_all()
        await cleanup
        return True
    finally:
        signalled.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


async def _wait_for_stop(loop: asyncio.AbstractEventLoop, control: Control) -> None:
    """Until SIGTERM/SIGINT; each SIGHUP meanwhile reloads the file (SPEC §1, §6)."""
    stop = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()

    def reload() -> None:
        log.info("SIGHUP: reloading %s", control.path)
        task: asyncio.Task[object] = loop.create_task(control.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, control.reopen_logs)  # after a log rotation
    try:
        await stop.wait()
    finally:
        # SIGTERM / SIGINT keep a handler (this one until _drain puts its own): back at their
        # default action for a moment, a second signal would kill the process outright.
        loop.remove_signal_handler(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP while stopping: ignored"))
